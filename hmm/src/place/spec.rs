//! One experiment point as compact text, and its result as one JSON line.
//!
//! The xtask expands an experiment file into points and writes them in this format into the
//! guest's boot module; the guest decodes them, runs each, and prints one `@@POINT {json}` line
//! per point (and `@@TRACE {json}` lines when traced). Both sides use this module, so the format
//! is defined once (the tags and the JSON writer are `boot::protocol`'s).
//!
//! ```text
//! point 3
//! label tree+lru4k/bfs/1.25
//! devices 2048 2048
//! run cpus=1 wave=64 batch=256 trace=0 mechanism=real scheduler=heft
//! cost far_fault_us=45.0
//! policy tree threshold=51
//! evict order=lru4k
//! workload bfs oversubscription=1.25 device=dev0
//! end
//! ```
//!
//! Every value is a word (no spaces); the label is the rest of its line.

use super::cost::CostModel;
use super::engine::{self, Config, Engine, MechError, Mechanism, Outcome};
use super::params::{ParamDef, ParamError, Params, Value};
use super::policy::Policy;
use super::workload::{self, Setup, Target, Workload};
use super::{MAX_DEVICES, policies, sched};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write as _;

/// Parameters of the `run` line.
pub const RUN: &[ParamDef] = &[
    ParamDef::int("cpus", 1, 1, 256, "CPU cores for CPU phases"),
    ParamDef::int("wave", 64, 1, 65536, "accesses a device issues between fault services"),
    ParamDef::int("batch", 256, 1, 4096, "faults per batch (UVM: 256)"),
    ParamDef::int("trace", 0, 0, 1_000_000, "trace events kept (0: none)"),
    ParamDef::text(
        "mechanism",
        "real",
        &["real", "host"],
        "the real devices, or the HMM stack over the host platform (software page tables, RAM-backed devices)",
    ),
    ParamDef::text("scheduler", sched::DEFAULT, sched::NAMES, "the scheduler placing phases on CPU cores and devices"),
];

/// A change of a device's memory during a point (an experiment file's `[[event]]`): from
/// simulated time `at_ns` on, device `device` holds at most `pages` pages; the engine evicts
/// what no longer fits, by the policy's order, at its first wave at or after `at_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    /// When, simulated ns from the point's start.
    pub at_ns: u64,
    /// The device.
    pub device: u8,
    /// Its memory from then on, pages.
    pub pages: u32,
}

/// One point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Its number in the experiment.
    pub id: u32,
    /// A readable name.
    pub label: String,
    /// Pages of each device's memory the point may use.
    pub devices: Vec<u32>,
    /// The `run` line.
    pub run: Params,
    /// The cost model.
    pub cost: Params,
    /// Placement policy name.
    pub policy: String,
    /// Its parameters.
    pub policy_params: Params,
    /// Eviction parameters.
    pub evict: Params,
    /// Workloads (kind, parameters).
    pub workloads: Vec<(String, Params)>,
    /// Changes of device memory during the run, in time order.
    pub events: Vec<Resize>,
}

/// A line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl core::fmt::Display for SpecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "experiment image line {}: {}", self.line, self.msg)
    }
}

fn kv(words: &[&str], line: usize) -> Result<Params, SpecError> {
    let mut p = Params::new();
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| SpecError { line, msg: format!("`{w}` is not key=value") })?;
        p.set(k, Value::parse(v));
    }
    Ok(p)
}

fn write_kv(out: &mut String, p: &Params) {
    for (k, v) in p.iter() {
        let _ = write!(out, " {k}={v}");
    }
}

impl Point {
    /// The point as text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "point {}", self.id);
        let _ = writeln!(s, "label {}", self.label.replace('\n', " "));
        s += "devices";
        for d in &self.devices {
            let _ = write!(s, " {d}");
        }
        s += "\nrun";
        write_kv(&mut s, &self.run);
        s += "\ncost";
        write_kv(&mut s, &self.cost);
        let _ = write!(s, "\npolicy {}", self.policy);
        write_kv(&mut s, &self.policy_params);
        s += "\nevict";
        write_kv(&mut s, &self.evict);
        for (kind, p) in &self.workloads {
            let _ = write!(s, "\nworkload {kind}");
            write_kv(&mut s, p);
        }
        for e in &self.events {
            let _ = write!(s, "\nevent {} {} {}", e.at_ns, e.device, e.pages);
        }
        s += "\nend\n";
        s
    }

    /// Every point in `text`.
    pub fn decode_all(text: &str) -> Result<Vec<Point>, SpecError> {
        let mut out = Vec::new();
        let mut cur: Option<Point> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = l.split_whitespace().collect();
            let err = |msg: String| SpecError { line, msg };
            if words[0] == "point" {
                if cur.is_some() {
                    return Err(err("`point` before the previous point's `end`".into()));
                }
                let id =
                    words.get(1).and_then(|w| w.parse().ok()).ok_or_else(|| err("`point` needs a number".into()))?;
                cur = Some(Point {
                    id,
                    label: String::new(),
                    devices: Vec::new(),
                    run: Params::new(),
                    cost: Params::new(),
                    policy: String::new(),
                    policy_params: Params::new(),
                    evict: Params::new(),
                    workloads: Vec::new(),
                    events: Vec::new(),
                });
                continue;
            }
            let p = cur.as_mut().ok_or_else(|| err(format!("`{}` outside a point", words[0])))?;
            match words[0] {
                "label" => p.label = l[5..].trim().to_string(),
                "devices" => {
                    p.devices = words[1..]
                        .iter()
                        .map(|w| w.parse::<u32>().map_err(|_| err(format!("device size `{w}` is not a page count"))))
                        .collect::<Result<_, _>>()?
                }
                "run" => p.run = kv(&words[1..], line)?,
                "cost" => p.cost = kv(&words[1..], line)?,
                "policy" => {
                    p.policy = words.get(1).ok_or_else(|| err("`policy` needs a name".into()))?.to_string();
                    p.policy_params = kv(&words[2..], line)?;
                }
                "evict" => p.evict = kv(&words[1..], line)?,
                "workload" => {
                    let kind = words.get(1).ok_or_else(|| err("`workload` needs a kind".into()))?.to_string();
                    p.workloads.push((kind, kv(&words[2..], line)?));
                }
                "event" => {
                    let n = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
                    let (Some(at_ns), Some(device), Some(pages)) = (n(1), n(2), n(3)) else {
                        return Err(err("`event` needs a time (ns), a device and a page count".into()));
                    };
                    let (Ok(device), Ok(pages)) = (u8::try_from(device), u32::try_from(pages)) else {
                        return Err(err("`event`: device or page count out of range".into()));
                    };
                    p.events.push(Resize { at_ns, device, pages });
                }
                "end" => out.extend(cur.take()),
                w => return Err(err(format!("unknown line `{w}`"))),
            }
        }
        if cur.is_some() {
            return Err(SpecError { line: text.lines().count(), msg: "the last point has no `end`".into() });
        }
        Ok(out)
    }

    /// Checks everything and builds the run. `have` is the device memory the machine has, in
    /// pages (the point may not ask for more).
    pub fn prepare(&self, have: &[u32]) -> Result<Prepared, ParamError> {
        if self.devices.is_empty() || self.devices.len() > MAX_DEVICES {
            return Err(ParamError::Other(format!(
                "a point needs 1 to {MAX_DEVICES} devices, it names {}",
                self.devices.len()
            )));
        }
        if self.devices.len() > have.len() {
            return Err(ParamError::Other(format!(
                "the point uses {} devices; the machine has {}",
                self.devices.len(),
                have.len()
            )));
        }
        for (d, (&want, &got)) in self.devices.iter().zip(have).enumerate() {
            if want == 0 || want > got {
                return Err(ParamError::Other(format!(
                    "device {d}: the point uses {want} pages of device memory; the machine has {got} (1 to {got} allowed)"
                )));
            }
        }
        if self.workloads.is_empty() {
            return Err(ParamError::Other("a point needs at least one workload".into()));
        }
        for e in &self.events {
            let Some(&got) = have.get(e.device as usize).filter(|_| (e.device as usize) < self.devices.len()) else {
                return Err(ParamError::Other(format!(
                    "an event resizes device {}; the point uses {} devices",
                    e.device,
                    self.devices.len()
                )));
            };
            if e.pages == 0 || e.pages > got {
                return Err(ParamError::Other(format!(
                    "an event gives device {} {} pages; 1 to {got} (the machine's) allowed",
                    e.device, e.pages
                )));
            }
        }
        if self.events.windows(2).any(|w| w[1].at_ns < w[0].at_ns) {
            return Err(ParamError::Other("the point's events are not in time order".into()));
        }
        let run = self.run.checked(RUN)?;
        // Checked against the same names just above, so this cannot fail; kept typed anyway.
        let scheduler = sched::build(run.text("scheduler")).map_err(|e| ParamError::Other(e.to_string()))?;
        let cost = CostModel::from_params(&self.cost)?;
        let policy = policies::build(&self.policy, &self.policy_params, &self.evict)?;
        let mut built: Vec<Box<dyn Workload>> = Vec::new();
        let mut processes = Vec::new();
        for (i, (kind, p)) in self.workloads.iter().enumerate() {
            let (common, own) = workload::check(kind, p)?;
            processes.push(common.int("process") as u32);
            let device = workload::target(&common);
            let basis = workload::basis(device, &self.devices).ok_or_else(|| ParamError::Bad {
                name: "device".into(),
                value: match device {
                    Target::Dev(d) => format!("dev{d}"),
                    other => format!("{other:?}"),
                },
                allowed: format!(
                    "dev0 to dev{} (the point uses {} devices)",
                    self.devices.len() - 1,
                    self.devices.len()
                ),
            })?;
            let setup = Setup {
                pages: workload::footprint(&common, basis),
                device,
                devices: self.devices.len() as u8,
                seed: common.int("seed") as u64 + i as u64,
                iterations: common.int("iterations") as u32,
                alloc: workload::Alloc::of(&common),
            };
            built.push(workload::build(kind, &own, &setup)?);
        }
        let (bases, pages) = engine::layout(&built.iter().map(|w| w.pages()).collect::<Vec<_>>());
        let cfg = Config {
            wave: run.int("wave") as u32,
            batch: run.int("batch") as u32,
            cpus: run.int("cpus") as u32,
            trace_limit: run.int("trace") as u32,
        };
        Ok(Prepared {
            pages,
            bases,
            processes,
            events: self.events.clone(),
            workloads: built,
            policy,
            cost,
            cfg,
            capacities: self.devices.clone(),
            host: run.text("mechanism") == "host",
            scheduler,
        })
    }
}

/// A checked point, ready to run.
pub struct Prepared {
    /// Managed pages (all workloads, each 2 MiB-aligned).
    pub pages: u32,
    /// Where each workload's pages start.
    pub bases: Vec<u32>,
    /// Each workload's process.
    pub processes: Vec<u32>,
    /// Device memory changes during the run.
    pub events: Vec<Resize>,
    /// The workloads.
    pub workloads: Vec<Box<dyn Workload>>,
    /// The policy.
    pub policy: Box<dyn Policy>,
    /// The costs.
    pub cost: CostModel,
    /// Engine settings.
    pub cfg: Config,
    /// Device pages used.
    pub capacities: Vec<u32>,
    /// Run over the HMM stack on the host platform (`engine::host::HostStack`, in the guest
    /// too) rather than the real devices.
    pub host: bool,
    /// The scheduler placing phases.
    pub scheduler: Box<dyn sched::Scheduler>,
}

impl core::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Prepared({} pages, {}, {} workloads)", self.pages, self.policy.name(), self.workloads.len())
    }
}

impl Prepared {
    /// Which process each managed page belongs to ([`engine::pages::process_runs`]): a
    /// mechanism maps each process's pages in an address space of its own.
    pub fn process_runs(&self) -> Vec<(u32, u32, u32)> {
        engine::pages::process_runs(&self.bases, &self.processes, self.pages)
    }

    /// Runs the point over `mech` (which manages `self.pages` pages).
    pub fn run(self, mech: &mut dyn Mechanism) -> Result<Outcome, MechError> {
        let mut e = Engine::new(self.pages, &self.capacities, self.cost, self.policy, mech, self.cfg);
        e.set_scheduler(self.scheduler);
        e.set_events(&self.events);
        for ((w, base), process) in self.workloads.into_iter().zip(self.bases).zip(self.processes) {
            e.add_in(w, base, process);
        }
        e.run()
    }
}

/// The JSON writer of every guest line (`boot::protocol::json`), into a `String`.
type Json = boot::protocol::json::Json<String>;

/// The counters of a point's result, by name, in the order of its JSON object (and of the
/// xtask's CSV columns: [`counter_names`]).
pub fn counters(s: &engine::Stats) -> [(&'static str, u64); 20] {
    [
        ("accesses", s.accesses),
        ("dev_faults", s.dev_faults),
        ("batches", s.batches),
        ("cpu_faults", s.cpu_faults),
        ("to_dev", s.to_dev),
        ("to_cpu", s.to_cpu),
        ("dev_to_dev", s.dev_to_dev),
        ("prefetched", s.prefetched),
        ("prefetch_unused", s.prefetch_unused),
        ("evicted", s.evicted),
        ("remote_maps", s.remote_maps),
        ("duplicates", s.duplicates),
        ("invalidations", s.invalidations),
        ("throttles", s.throttles),
        ("fallbacks", s.fallbacks),
        ("dup_unsupported", s.dup_unsupported),
        ("local_lines", s.local_lines),
        ("remote_lines", s.remote_lines),
        ("notifications", s.notifications),
        ("remigrated", s.remigrated),
    ]
}

/// The names of [`counters`], in order.
pub fn counter_names() -> [&'static str; 20] {
    counters(&engine::Stats::default()).map(|(k, _)| k)
}

/// A point's result as one JSON object (the `@@POINT` line's payload). Times in ns, with one
/// decimal; utilisation with four.
pub fn result_json(p: &Point, o: &Outcome, mechanism: &str) -> String {
    let s = &o.stats;
    let mut j = Json::new();
    j.object(|j| {
        j.num("id", p.id);
        j.str("label", &p.label);
        j.str("policy", &p.policy);
        j.str("mechanism", mechanism);
        j.str("scheduler", o.scheduler);
        j.fixed("sim_ns", s.sim_ns, 1);
        j.fixed("makespan_ns", s.sim_ns, 1);
        j.num("mechanism_ns", s.wall_ns);
        for (k, v) in counters(s) {
            j.num(k, v);
        }
        j.fixed("transfer_ns", s.transfer_ns, 1);
        j.arr("procs", |j| {
            for p in &o.procs {
                j.item(|j| {
                    j.str("name", &p.name);
                    j.fixed("busy_ns", p.busy_ns, 1);
                    j.fixed("utilisation", p.utilisation, 4);
                    j.num("phases", p.phases);
                    j.fixed("line_ns", p.line_ns, 1);
                });
            }
        });
        j.arr("links", |j| {
            for l in &o.links {
                j.item(|j| {
                    j.str("name", &l.name);
                    j.num("in_bytes", l.in_bytes);
                    j.num("out_bytes", l.out_bytes);
                    j.fixed("busy_ns", l.busy_ns, 1);
                });
            }
        });
        j.arr("workloads", |j| {
            for w in &o.workloads {
                j.item(|j| {
                    j.str("name", &w.name);
                    j.num("process", w.process);
                    j.num("pages", w.pages);
                    j.num("faults", w.counts.faults);
                    j.num("to_dev", w.counts.to_dev);
                    j.num("to_cpu", w.counts.to_cpu);
                    j.num("evicted", w.counts.evicted);
                    j.num("steps", w.steps);
                    j.fixed("end_ns", w.end_ns, 1);
                    j.str_or_null("error", w.error.as_deref());
                });
            }
        });
        j.obj("policy_counters", |j| {
            for (k, v) in &o.policy {
                j.num(k, v);
            }
        });
        j.num("trace_events", o.trace.len());
        j.num("trace_dropped", o.trace_dropped);
    });
    j.finish()
}

/// A trace event as one JSON object (the `@@TRACE` line's payload).
pub fn trace_json(point: u32, e: &engine::Event) -> String {
    let mut j = Json::new();
    j.object(|j| {
        j.num("point", point);
        j.fixed("t", e.t, 1);
        j.fixed("dur", e.dur, 1);
        j.str("lane", &e.lane);
        j.str("kind", e.kind);
        j.num("pages", e.pages);
        j.str("what", &e.what);
    });
    j.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn point() -> Point {
        let mut w = Params::new();
        w.set("oversubscription", Value::Float(1.25));
        let mut ev = Params::new();
        ev.set("order", Value::Text("lru4k".into()));
        let mut run = Params::new();
        run.set("mechanism", Value::Text("host".into()));
        Point {
            id: 3,
            label: "tree+lru4k/bfs/1.25".into(),
            devices: alloc::vec![256],
            run,
            cost: Params::new(),
            policy: "tree".into(),
            policy_params: Params::new(),
            evict: ev,
            workloads: alloc::vec![("bfs".into(), w)],
            events: alloc::vec![Resize { at_ns: 2_000_000, device: 0, pages: 128 }],
        }
    }

    #[test]
    fn points_round_trip() {
        let p = point();
        let text = p.encode() + &Point { id: 4, ..p.clone() }.encode();
        let back = Point::decode_all(&text).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], p);
        assert_eq!(back[1].id, 4);
    }

    #[test]
    fn bad_images_name_the_line() {
        let e = Point::decode_all("point 1\nlabel x\nfoo\nend\n").unwrap_err();
        assert_eq!((e.line, e.msg.as_str()), (3, "unknown line `foo`"));
        let e = Point::decode_all("point 1\ncost far_fault_us\nend\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(Point::decode_all("point 1\n").is_err());
        assert!(Point::decode_all("label x\n").is_err());
    }

    #[test]
    fn prepare_checks_the_machine() {
        let p = point();
        assert!(p.prepare(&[256]).is_ok());
        let e = p.prepare(&[128]).unwrap_err();
        assert!(e.to_string().contains("uses 256 pages of device memory; the machine has 128"), "{e}");
        let mut q = p.clone();
        q.workloads[0].1.set("device", Value::Text("dev1".into()));
        let e = q.prepare(&[256, 256]).unwrap_err();
        assert!(e.to_string().contains("dev0 to dev0"), "{e}");
        let mut q = p.clone();
        q.run.set("scheduler", Value::Text("hfet".into()));
        let e = q.prepare(&[256]).unwrap_err().to_string();
        assert!(e.contains("scheduler") && e.contains("one of eft, static, round-robin, heft, dmda"), "{e}");
        let mut q = p.clone();
        q.workloads[0].0 = "bsf".into();
        assert!(q.prepare(&[256]).unwrap_err().to_string().contains("unknown workload `bsf`"));
    }

    fn stack(prepared: &Prepared) -> super::engine::host::HostStack {
        let t = core::cell::Cell::new(0u64);
        let clock = Box::new(move || {
            t.set(t.get() + 1000);
            t.get()
        });
        super::engine::host::HostStack::new(prepared.pages, &prepared.capacities, clock).unwrap()
    }

    #[test]
    fn the_mechanism_is_real_or_host() {
        let p = point();
        assert!(p.prepare(&[256]).unwrap().host);
        let mut q = p.clone();
        q.run.set("mechanism", Value::Text("real".into()));
        assert!(!q.prepare(&[256]).unwrap().host);
        q.run = Params::new();
        assert!(!q.prepare(&[256]).unwrap().host, "real by default");
        q.run.set("mechanism", Value::Text("model".into()));
        let e = q.prepare(&[256]).unwrap_err().to_string();
        assert!(e.contains("mechanism") && e.contains("one of real, host"), "{e}");
    }

    #[test]
    fn results_are_json() {
        let p = point();
        let prepared = p.prepare(&[256]).unwrap();
        let mut m = stack(&prepared);
        let o = prepared.run(&mut m).unwrap();
        let j = result_json(&p, &o, "host");
        assert!(j.starts_with("{\"id\":3,\"label\":\"tree+lru4k/bfs/1.25\""), "{j}");
        assert!(j.contains("\"scheduler\":\"eft\",\"sim_ns\":"), "{j}");
        let mut q = p.clone();
        q.run.set("scheduler", Value::Text("heft".into()));
        let prepared = q.prepare(&[256]).unwrap();
        let mut m = stack(&prepared);
        let o = prepared.run(&mut m).unwrap();
        assert!(result_json(&q, &o, "host").contains("\"scheduler\":\"heft\""));
        assert!(Point::decode_all(&q.encode()).unwrap()[0].run.text("scheduler") == "heft");
        assert!(j.ends_with("\"trace_dropped\":0}"), "{j}");
    }
}
