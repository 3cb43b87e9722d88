use super::*;

/// The workspace root (the test modules of `experiment` share it).
pub(super) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

const SMALL: &str = r#"
name = "small"
device_memory = ["1M"]
mechanism = "host"
[[workload]]
kind = "stream"
[[workload]]
kind = "random"
updates = 2
[[policy]]
name = "od"
placement = "on-touch"
eviction = { order = "lru4k" }
[[policy]]
name = "tree"
placement = "tree"
[sweep]
oversubscription = [1.0, 1.5]
[[table]]
title = "t"
columns = ["od", "tree", "tree@1.5"]
normalise = "tree"
ratios = [["od", "tree"]]
published = { stream = [40.0, 1.0, -1] }
"#;

fn load(text: &str) -> Result<Loaded, String> {
    load_str(Path::new("exp.toml"), text, &root())
}

#[test]
fn shipped_experiments_load() {
    for (f, n) in [
        ("experiments/default.toml", 12),
        ("experiments/reproduce.toml", 242),
        ("experiments/numa.toml", 2),
        ("experiments/schedulers.toml", 5),
        ("experiments/tenants.toml", 12),
        ("experiments/resize.toml", 2),
        ("experiments/multigpu.toml", 18),
    ] {
        let l = super::load(&root().join(f), &root()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.points.len(), n, "{f}");
    }
}

#[test]
fn points_expand_the_sweep() {
    let l = load(SMALL).unwrap();
    assert_eq!(l.points.len(), 8);
    assert_eq!(l.points[0].devices, [256]);
    assert_eq!(l.keys[0], ("stream".into(), "od".into(), 1.0));
    assert_eq!(l.points[7].label, "tree/random/1.5");
    // Together, the one workload row is `stream+random` (the table's `stream` row names none).
    let untabled = SMALL.split("[[table]]").next().unwrap();
    let together = load(&untabled.replace("[sweep]", "[sweep]\ntogether = true")).unwrap();
    assert_eq!(together.points.len(), 4);
    assert_eq!(together.points[0].workloads.len(), 2);
}

/// `scale = "device_memory"` keeps each footprint (its `footprint_pages`, else the device memory
/// given) and gives the devices what the workload allocates ÷ ratio, as UVMSmart's `gddr_size`
/// (under `allocation = "uvmsmart"` the allocations' rounded sizes); the default keeps device
/// memory and scales the footprint.
#[test]
fn a_sweep_scales_device_memory_or_the_footprint() {
    let fixed = SMALL
        .replace("updates = 2", "updates = 2\nfootprint_pages = 200")
        .replace("[sweep]", "[sweep]\nscale = \"device_memory\"");
    let l = load(&fixed).unwrap();
    let at = |w: &str, o: f64| l.keys.iter().position(|k| k.0 == w && k.1 == "od" && k.2 == o).unwrap();
    let footprint = |i: usize| {
        let p = &l.points[i];
        let (common, _) = hmm::place::workload::check(&p.workloads[0].0, &p.workloads[0].1).unwrap();
        (p.devices.clone(), hmm::place::workload::footprint(&common, p.devices[0]))
    };
    // stream: 256 pages (1M) at both ratios, of which its three arrays take 255; device memory
    // 255, then 255 / 1.5.
    assert_eq!(footprint(at("stream", 1.0)), (vec![255], 256));
    assert_eq!(footprint(at("stream", 1.5)), (vec![170], 256));
    // random: its own 200 pages at both.
    assert_eq!(footprint(at("random", 1.0)), (vec![200], 200));
    assert_eq!(footprint(at("random", 1.5)), (vec![133], 200));
    // UVMSmart's allocation: random's one array of 200 pages (800 KiB) takes 1 MiB.
    let l = load(&fixed.replace("updates = 2", "updates = 2\nallocation = \"uvmsmart\"")).unwrap();
    let i = l.keys.iter().position(|k| k.0 == "random" && k.1 == "od" && k.2 == 1.5).unwrap();
    assert_eq!(l.points[i].devices, [170]);
    // The default: device memory fixed, the footprint 1.5 × it.
    let l = load(SMALL).unwrap();
    let i = l.keys.iter().position(|k| k.0 == "stream" && k.1 == "od" && k.2 == 1.5).unwrap();
    let (common, _) = hmm::place::workload::check("stream", &l.points[i].workloads[0].1).unwrap();
    assert_eq!((l.points[i].devices.clone(), hmm::place::workload::footprint(&common, 256)), (vec![256], 384));
    // Bad values and a scale without ratios are errors that say what to give.
    let e = err(&SMALL.replace("[sweep]", "[sweep]\nscale = \"memory\""));
    assert!(e.contains("`sweep.scale`: \"memory\": expected \"footprint\"") && e.contains("\"device_memory\""), "{e}");
    let untabled = SMALL.split("[[table]]").next().unwrap();
    let e = err(&untabled.replace("oversubscription = [1.0, 1.5]", "scale = \"device_memory\""));
    assert!(e.contains("`sweep.scale`") && e.contains("give [sweep] oversubscription too"), "{e}");
}

/// `[sweep] unscaled` keeps `device_memory` as given at its ratios (the artifact's 1 GB GDDR
/// without oversubscription) and scales the others; a point it leaves oversubscribed, a ratio
/// outside the sweep and a sweep that scales footprints are errors that say what to do.
#[test]
fn unscaled_ratios_keep_the_device_memory_given() {
    let fixed = SMALL
        .replace("updates = 2", "updates = 2\nfootprint_pages = 200")
        .replace("[sweep]", "[sweep]\nscale = \"device_memory\"\nunscaled = [1.0]");
    let l = load(&fixed).unwrap();
    let at = |w: &str, o: f64| l.keys.iter().position(|k| k.0 == w && k.1 == "od" && k.2 == o).unwrap();
    // At 1.0 every device has the 1M given (256 pages), not the 200 pages random allocates.
    assert_eq!(l.points[at("random", 1.0)].devices, [256]);
    assert_eq!(l.points[at("stream", 1.0)].devices, [256]);
    // At 1.5 they stay what the workload allocates ÷ 1.5.
    assert_eq!(l.points[at("random", 1.5)].devices, [133]);
    assert_eq!(l.points[at("stream", 1.5)].devices, [170]);
    // A workload allocating more than device_memory would be oversubscribed at 1.0.
    let e = err(&fixed.replace("footprint_pages = 200", "footprint_pages = 300"));
    assert!(
        e.contains("`sweep.unscaled`")
            && e.contains("(od/random/1) allocates 300 pages, more than device_memory's 256")
            && e.contains("raise device_memory"),
        "{e}"
    );
    let e = err(&fixed.replace("unscaled = [1.0]", "unscaled = [1.25]"));
    assert!(e.contains("`sweep.unscaled`: 1.25 is not in [sweep] oversubscription ([1.0, 1.5])"), "{e}");
    let e = err(&fixed.replace("unscaled = [1.0]", "unscaled = [1.0, 1.0]"));
    assert!(e.contains("1 is given twice"), "{e}");
    let e = err(&fixed.replace("scale = \"device_memory\"\n", ""));
    assert!(e.contains("`sweep.unscaled`: only scale = \"device_memory\" scales device memory"), "{e}");
}

fn err(text: &str) -> String {
    load(text).unwrap_err()
}

#[test]
fn errors_name_file_line_field_and_what_is_allowed() {
    let e = err(&SMALL.replace("placement = \"tree\"", "placement = \"treee\""));
    assert!(e.starts_with("exp.toml:16:13: `policy[1].placement`: unknown policy `treee`; known: advice"), "{e}");
    let e = err(&SMALL.replace("updates = 2", "updates = 0"));
    assert!(
        e.starts_with("exp.toml:9:11: `workload[1].updates`: `updates` = 0: expected an integer from 1 to 1024"),
        "{e}"
    );
    let e = err(&SMALL.replace("updates = 2", "update = 2"));
    assert!(e.contains("`workload[1].update`: unknown parameter `update`; allowed: updates, oversubscription"), "{e}");
    let e = err(&SMALL.replace("order = \"lru4k\"", "order = \"lru\""));
    assert!(e.contains(":13:") && e.contains("expected one of root-chunk, lru4k"), "{e}");
    let e = err(&SMALL.replace("[\"1M\"]", "[\"128M\"]"));
    assert!(e.contains("`device_memory`: dev0: 128M asked, the machine's dev0 has 64M"), "{e}");
    let e = err(&SMALL.replace("kind = \"random\"", "kind = \"randum\""));
    assert!(e.contains("unknown workload `randum`"), "{e}");
    let e = err(&SMALL.replace("mechanism = \"host\"", "mechanism = \"modle\""));
    assert!(e.contains("`mechanism`") && e.contains("real, host"), "{e}");
    let e = err(&format!("colour = 1\n{SMALL}"));
    assert!(e.starts_with("exp.toml:1:1: `colour`: unknown field `colour`"), "{e}");
    let e = err(&SMALL.replace("[1.0, 1.5]", "[1.0, 9.0]"));
    assert!(e.contains("`sweep.oversubscription`: 9: expected 0.01 to 4.0"), "{e}");
    let e = err(&SMALL.replace("[\"1M\"]", "[\"64M\"]").replace("[1.0, 1.5]", "[4.0]\ntogether = true"));
    assert!(e.contains("MiB of RAM"), "{e}");
    let e = err(&SMALL.replace("device_memory = [\"1M\"]", "device_memory = [\"1M\", \"1M\", \"1M\"]"));
    assert!(e.contains("give 1 to 2 sizes"), "{e}");
    let e = err(&SMALL.replace("[sweep]", "[cost]\nfar_fault_us = \"fast\"\n[sweep]"));
    assert!(e.contains("`cost.far_fault_us`") && e.contains("a number from 0 to 10000"), "{e}");
    let e = err(&SMALL.replace("kind = \"stream\"", "kind = \"stream\"\ndevice = \"dev5\""));
    assert!(e.contains("dev0 to dev0"), "{e}");
    // Real CPU cores are the machine's CPUs; the host stack runs any number in one address space.
    let real = SMALL.replace("mechanism = \"host\"", "mechanism = \"real\"\n[run]\ncpus = 3");
    let e = err(&real);
    assert!(e.contains("`run.cpus`: 3 CPU cores asked") && e.contains("has 2; give at most 2"), "{e}");
    assert!(load(&SMALL.replace("mechanism = \"host\"", "mechanism = \"host\"\n[run]\ncpus = 3")).is_ok());
    // HMAT line costs need a machine with an HMAT.
    let e = err(&SMALL.replace("[sweep]", "[cost]\nlines = \"hmat\"\n[sweep]"));
    assert!(e.contains("`cost.lines`") && e.contains("no [[numa.hmat]] entries"), "{e}");
    let numa = SMALL
        .replace("[sweep]", "[cost]\nlines = \"hmat\"\n[sweep]")
        .replace("name = \"small\"", "name = \"small\"\nmachine = \"qemu/numa-devices.toml\"");
    assert!(load(&numa).is_ok(), "{:?}", load(&numa).err());
}

/// Runs the points over the HMM stack on the host platform, as `--host` does.
fn results(l: &Loaded) -> (Results, Vec<Json>) {
    let mut r = Results::new();
    let mut tr = Vec::new();
    for p in &l.points {
        let prepared = p.prepare(&p.devices).unwrap();
        let mut m =
            hmm::place::engine::host::HostStack::new(prepared.pages, &prepared.capacities, Box::new(|| 0)).unwrap();
        let o = prepared.run(&mut m).unwrap();
        for e in &o.trace {
            tr.push(serde_json::from_str(&hmm::place::spec::trace_json(p.id, e)).unwrap());
        }
        r.insert(p.id, serde_json::from_str(&hmm::place::spec::result_json(p, &o, "host")).unwrap());
    }
    (r, tr)
}

#[test]
fn reports_from_results() {
    let l = load(&SMALL.replace("mechanism = \"host\"", "mechanism = \"host\"\nrun = { trace = 50 }")).unwrap();
    let (mut r, tr) = results(&l);
    let table = csv(&l, &r);
    assert_eq!(table.lines().count(), 9);
    assert!(
        table.starts_with(
            "id,label,workload,policy,scheduler,oversubscription,repetition,seeds,mechanism,sim_ms,mechanism_ms,transfer_ms,accesses"
        ),
        "{table}"
    );
    assert!(
        table.contains(",cpu0_utilisation,dev0_utilisation,cpu0_line_ns,dev0_line_ns,link0_in_mib,link0_out_mib,error")
    );
    // The default cost model's line costs: 2 ns for the CPU, 1 ns for the device; no error.
    let row: Vec<&str> = table.lines().nth(1).unwrap().split(',').collect();
    let header: Vec<&str> = table.lines().next().unwrap().split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!((col("cpu0_line_ns"), col("dev0_line_ns"), col("error")), ("2.00", "1.00", ""), "{table}");
    // Bytes over the link are the pages moved each way.
    let mib = |pages: &str| format!("{:.3}", pages.parse::<u64>().unwrap() as f64 * 4096.0 / 1048576.0);
    assert_eq!(col("link0_in_mib"), mib(col("to_dev")), "{table}");
    assert_eq!(col("link0_out_mib"), mib(col("to_cpu")), "{table}");
    assert_ne!(col("link0_in_mib"), "0.000", "{table}");
    assert!(table.lines().nth(1).unwrap().contains(",eft,"), "{table}");
    let sum = summary(&l, &r);
    assert!(sum.lines().nth(1).unwrap().starts_with("stream"), "{sum}");
    let cmp = comparisons(&l, &r);
    // od ÷ tree is ours | 40.00 published; cells are normalised to the tree.
    assert!(cmp.contains("| 40.00"), "{cmp}");
    assert!(cmp.contains("1.00 | 1.00"), "{cmp}");
    let plots = plots(&l, &r).unwrap();
    let names: Vec<&str> = plots.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["plot-stream.svg", "plot-stream-mech.svg", "plot-random.svg", "plot-random-mech.svg"]);
    assert!(plots[0].1.contains("<polyline"));
    let t: Json = serde_json::from_str(&trace(&l, &r, &tr)).unwrap();
    assert!(t["traceEvents"].as_array().unwrap().iter().any(|e| e["ph"] == "X" && e["cat"] == "faults"));
    // A failed point is reported, not dropped.
    r.insert(3, serde_json::json!({"id": 3, "error": "boom"}));
    assert!(summary(&l, &r).contains("error: boom"));
    assert!(csv(&l, &r).lines().nth(4).unwrap().ends_with(",boom"));
}

/// results.csv used to be written by hand: a label or error with a comma or a quote shifted
/// every later column. Every row now parses back to the header's width with the text intact.
#[test]
fn csv_fields_with_commas_and_quotes_stay_one_field() {
    let l = load(&SMALL.split("[[table]]").next().unwrap().replace("name = \"od\"", "name = \"od, \\\"tuned\\\"\""))
        .unwrap();
    let (mut r, _) = results(&l);
    r.insert(0, serde_json::json!({"id": 0, "error": "device said \"no\", twice"}));
    let text = csv(&l, &r);
    let mut rd = ::csv::Reader::from_reader(text.as_bytes());
    let width = rd.headers().unwrap().len();
    let rows: Vec<::csv::StringRecord> = rd.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), l.points.len());
    assert!(rows.iter().all(|row| row.len() == width), "{text}");
    assert!(rows.iter().any(|row| &row[3] == "od, \"tuned\""), "{text}");
    assert_eq!(&rows[0][width - 1], "device said \"no\", twice");
}

/// The companion file names every column of results.csv, in order, each with a unit.
#[test]
fn every_csv_column_has_a_unit_and_a_meaning() {
    let l = load(SMALL).unwrap();
    let (r, _) = results(&l);
    let header: Vec<String> = csv(&l, &r).lines().next().unwrap().split(',').map(String::from).collect();
    let cols = csv_columns(&r);
    let mut rd = ::csv::Reader::from_reader(cols.as_bytes());
    let described: Vec<(String, String)> =
        rd.records().map(|x| x.unwrap()).map(|x| (x[0].into(), x[1].into())).collect();
    assert_eq!(described.iter().map(|d| d.0.clone()).collect::<Vec<_>>(), header);
    assert!(described.iter().all(|d| !d.1.is_empty()));
}

/// A boot whose guest log is kept: one with an error result or a point without a result.
#[test]
fn a_boot_failed_when_a_point_has_an_error_or_no_result() {
    use serde_json::json;
    let mut got = Results::new();
    got.insert(1, json!({ "id": 1, "sim_ns": 1.0 }));
    got.insert(2, json!({ "id": 2, "sim_ns": 2.0 }));
    assert!(!crate::experiment::boot_failed(&[1, 2], &got));
    assert!(crate::experiment::boot_failed(&[1, 2, 3], &got), "point 3 has no result");
    got.insert(3, json!({ "id": 3, "error": "a data check failed" }));
    assert!(crate::experiment::boot_failed(&[1, 3], &got));
}

#[test]
fn a_mechanism_error_reruns_the_rest_of_its_boot_in_a_fresh_guest() {
    use serde_json::json;
    let ok = |id: u32| json!({ "id": id, "sim_ns": 1.0 });
    let mut got = Results::new();
    got.insert(1, ok(1));
    got.insert(
        2,
        json!({ "id": 2, "error": "point 2: migrating pages 0..16 cpu->dev0: 0 of 16 moved", "kind": "mechanism" }),
    );
    // What the poisoned guest said about the points after: discarded.
    got.insert(
        3,
        json!({ "id": 3, "error": "point 3: device memory is not back to its empty state", "kind": "mechanism" }),
    );
    got.insert(4, ok(4));
    let b = sort_boot(&[1, 2, 3, 4], &got, None);
    assert_eq!(b.keep.iter().map(|k| k.0).collect::<Vec<_>>(), [1, 2]);
    assert!(b.keep.iter().all(|k| k.1.get("rerun").is_none()));
    let (rest, note) = b.rerun.clone().unwrap();
    assert_eq!(rest, [3, 4]);
    assert!(note.contains("point 2") && note.contains("mechanism error") && note.contains("0 of 16 moved"), "{note}");
    // The fresh guest runs 3 and 4: their results say they were rerun, and why.
    let mut again = Results::new();
    again.insert(3, ok(3));
    again.insert(4, ok(4));
    let c = sort_boot(&rest, &again, Some(&note));
    assert_eq!(c.rerun, None);
    assert_eq!(c.keep.len(), 2);
    assert!(c.keep.iter().all(|k| k.1["rerun"].as_str() == Some(note.as_str())));
    // A data-check failure is the point's own result: nothing is rerun.
    let mut check = Results::new();
    check.insert(1, json!({ "id": 1, "error": "page 0 holds page 512's data", "kind": "check" }));
    check.insert(2, ok(2));
    let d = sort_boot(&[1, 2], &check, None);
    assert_eq!((d.keep.len(), d.rerun), (2, None));
    // A mechanism error on the last point of a boot leaves nothing to rerun; an error without
    // a kind (an older guest) is not taken for one.
    let mut last = Results::new();
    last.insert(1, ok(1));
    last.insert(2, json!({ "id": 2, "error": "x", "kind": "mechanism" }));
    assert_eq!(sort_boot(&[1, 2], &last, None).rerun, None);
    let mut old = Results::new();
    old.insert(1, json!({ "id": 1, "error": "x" }));
    assert_eq!(sort_boot(&[1, 2], &old, None).rerun, None);
    // The summary shows the note.
    let l = load(SMALL).unwrap();
    let mut all = Results::new();
    for p in &l.points {
        all.insert(p.id, ok(p.id));
    }
    let id = l.points[1].id;
    all.insert(id, c.keep[0].1.clone());
    assert!(summary(&l, &all).contains("rerun in a fresh guest: point 2"), "{}", summary(&l, &all));
}

#[test]
fn schedulers_are_chosen_per_experiment_and_per_policy() {
    let text = format!("scheduler = \"heft\"\n{SMALL}")
        .replace("name = \"tree\"\n", "name = \"tree\"\nscheduler = \"dmda\"\n");
    let l = load(&text).unwrap();
    let sched = |p: &Point| p.run.get("scheduler").map(|v| v.to_string());
    for p in &l.points {
        let want = if p.label.starts_with("tree/") { "dmda" } else { "heft" };
        assert_eq!(sched(p).as_deref(), Some(want), "{}", p.label);
    }
    // Not given: the point's run line has no scheduler, so the engine's default (eft) runs.
    assert!(load(SMALL).unwrap().points.iter().all(|p| sched(p).is_none()));
    let e = err(&format!("scheduler = \"hfet\"\n{SMALL}"));
    assert!(e.starts_with("exp.toml:1:13: `scheduler`: "), "{e}");
    assert!(e.contains("one of eft, static, round-robin, heft, dmda"), "{e}");
    let e = err(&text.replace("\"dmda\"", "\"dmad\""));
    assert!(e.contains("`policy[1].scheduler`") && e.contains("one of eft, static"), "{e}");
}

/// A policy's own `oversubscription` runs it at only those of the sweep's ratios.
#[test]
fn a_policy_runs_at_its_own_ratios() {
    let only = SMALL.replace("placement = \"tree\"\n", "placement = \"tree\"\noversubscription = [1.5]\n");
    // The table's `tree` column (at 1.0) has no point any more: say so.
    let e = err(&only);
    assert!(e.contains("`table[0].columns`: `tree`: no point of `tree` at oversubscription 1; it runs at 1.5"), "{e}");
    let l = load(
        &only
            .replace("columns = [\"od\", \"tree\", \"tree@1.5\"]", "columns = [\"od\", \"od@1.5\", \"tree@1.5\"]")
            .replace("normalise = \"tree\"", "normalise = \"od\"")
            .replace("ratios = [[\"od\", \"tree\"]]", "ratios = []"),
    )
    .unwrap();
    assert_eq!(l.points.len(), 6);
    assert!(l.keys.iter().filter(|k| k.1 == "tree").all(|k| k.2 == 1.5), "{:?}", l.keys);
    assert_eq!(l.keys.iter().filter(|k| k.1 == "od").count(), 4);
    let e = err(&only.replace("[1.5]\n", "[2.0]\n"));
    assert!(e.contains("`policy[1].oversubscription`: 2 is not in [sweep] oversubscription ([1.0, 1.5])"), "{e}");
}

#[test]
fn a_policy_runs_on_its_own_workloads() {
    let only = SMALL.replace("placement = \"tree\"\n", "placement = \"tree\"\nworkloads = [\"stream\"]\n");
    let l = load(&only).unwrap();
    // od on both workloads at both ratios, tree on stream only.
    assert_eq!(l.points.len(), 6);
    assert!(l.keys.iter().filter(|k| k.1 == "tree").all(|k| k.0 == "stream"), "{:?}", l.keys);
    assert_eq!(l.keys.iter().filter(|k| k.1 == "od").count(), 4);
    let e = err(&only.replace("[\"stream\"]", "[\"streem\"]"));
    assert!(
        e.contains(
            "`policy[1].workloads`: no [[workload]] is labelled \"streem\"; the labels are [\"stream\", \"random\"]"
        ),
        "{e}"
    );
    let e = err(&only.replace("[\"stream\"]", "[\"stream\", \"stream\"]"));
    assert!(e.contains("`policy[1].workloads`: \"stream\" is given twice"), "{e}");
    let e = err(&only.replace("[\"stream\"]", "[]"));
    assert!(e.contains("`policy[1].workloads`: give at least one workload label"), "{e}");
    let e = err(&only.replace("[sweep]\n", "[sweep]\ntogether = true\n"));
    assert!(e.contains("`policy[1].workloads`: with [sweep] together"), "{e}");
}

/// Four policies, two workloads, two ratios; an absolute table compared to its reference `c`
/// and a normalised one. The hand-computed verdicts are in [`synthetic`].
const VERDICTS: &str = r#"
name = "verdicts"
device_memory = ["1M"]
mechanism = "host"
[[workload]]
kind = "stream"
[[workload]]
kind = "random"
[[policy]]
name = "a"
placement = "on-touch"
[[policy]]
name = "b"
placement = "on-touch"
[[policy]]
name = "c"
placement = "tree"
[[policy]]
name = "d"
placement = "tree"
[sweep]
oversubscription = [1.0, 1.5]
[[table]]
title = "abs"
unit = "us"
columns = ["a", "b", "c", "d"]
reference = "c"
published = { stream = [400, 100, 10, 103], random = [50, 20, -1, -1] }
[[table]]
title = "slow"
columns = ["c@1.5", "a@1.5"]
normalise = "c"
published = { stream = [3.0, 100.0] }
[[table]]
title = "nothing published"
columns = ["a", "b"]
"#;

/// Ours, in simulated ms, for (workload, policy, oversubscription); every point has a result.
/// - abs, stream (reference c = 1 ms; published reference 10): a 40/1 against 400/10, 1x, ok;
///   b 25 against 10, 2.5x, outside; c the reference; d 20 against 10.3, 1.94x, ok.
///   Orderings: b<a, c<a, d<a, c<b, c<d held; b, d (100 vs 103) within 5 %, not counted.
/// - abs, random: the reference is not published, so no cell counts; b<a published
///   (20 vs 50), ours 6 vs 5: reversed.
/// - slow, stream: c@1.5 is 4/1 against 3 (1.33x, ok), a@1.5 50/1 against 100 (0.5x, ok: the
///   bound is included); c@1.5 < a@1.5 held.
fn synthetic(l: &Loaded) -> Results {
    let ms = |w: &str, p: &str, o: f64| -> f64 {
        match (w, p, o == 1.0) {
            ("stream", "a", true) => 40.0,
            ("stream", "b", true) => 25.0,
            ("stream", "d", true) => 20.0,
            ("random", "a", true) => 5.0,
            ("random", "b", true) => 6.0,
            ("stream", "a", false) => 50.0,
            ("stream", "c", false) => 4.0,
            _ => 1.0,
        }
    };
    l.points
        .iter()
        .zip(&l.keys)
        .map(|(p, k)| (p.id, serde_json::json!({ "id": p.id, "sim_ns": ms(&k.0, &k.1, k.2) * 1e6 })))
        .collect()
}

fn id_of(l: &Loaded, w: &str, p: &str, o: f64) -> u32 {
    l.points.iter().zip(&l.keys).find(|(_, k)| k.0 == w && k.1 == p && k.2 == o).unwrap().0.id
}

#[test]
fn cells_are_within_2x_of_the_published_value_relative_to_the_reference() {
    use super::tables::Cell;
    let l = load(VERDICTS).unwrap();
    let v = verdicts(&l, &synthetic(&l));
    // The table with nothing published has no verdicts.
    assert_eq!(v.iter().map(|t| t.title.as_str()).collect::<Vec<_>>(), ["abs", "slow"]);
    let cell = |t: usize, w: &str, c: &str| v[t].cells.iter().find(|x| x.0 == w && x.1 == c).unwrap().2;
    // Divided by the reference, ours and published: 40/1 against 400/10.
    assert_eq!(cell(0, "stream", "a"), Cell::Ratio(1.0));
    assert!(cell(0, "stream", "a").within());
    assert_eq!(cell(0, "stream", "b"), Cell::Ratio(2.5));
    assert!(!cell(0, "stream", "b").within() && cell(0, "stream", "b").counted());
    assert!(cell(0, "stream", "d").within());
    assert_eq!(cell(0, "stream", "c"), Cell::Reference);
    assert!(!Cell::Reference.counted());
    // No published reference in the row: nothing counts.
    assert!(v[0].cells.iter().filter(|x| x.0 == "random").all(|x| x.2 == Cell::NotCounted));
    assert_eq!(v[0].cell_counts(), (2, 3));
    // Normalised cells compare directly; 0.5x and 2x are within, just past them is not.
    assert!((matches!(cell(1, "stream", "c@1.5"), Cell::Ratio(q) if (q - 4.0 / 3.0).abs() < 1e-9)));
    assert_eq!(cell(1, "stream", "a@1.5"), Cell::Ratio(0.5));
    assert!(cell(1, "stream", "a@1.5").within());
    assert!(Cell::Ratio(2.0).within() && !Cell::Ratio(2.01).within() && !Cell::Ratio(0.49).within());
    assert_eq!(v[1].cell_counts(), (2, 2));
    // The marks in the printed table.
    let cmp = comparisons(&l, &synthetic(&l));
    assert!(cmp.contains("40.0 | 400 ok") && cmp.contains("25.0 | 100 2.50x") && cmp.contains("1.0 | 10 ref"), "{cmp}");
    assert!(cmp.contains("verdict: 2 of 3 cells within 2x; 5 of 6 orderings as published"), "{cmp}");
}

#[test]
fn published_orderings_hold_or_are_reversed_and_ties_are_not_counted() {
    let l = load(VERDICTS).unwrap();
    let r = synthetic(&l);
    let v = verdicts(&l, &r);
    let names = |t: usize| -> Vec<(String, String, String, bool)> {
        v[t].orderings.iter().map(|o| (o.row.clone(), o.lower.clone(), o.higher.clone(), o.held())).collect()
    };
    let o = |w: &str, lo: &str, hi: &str, held: bool| (w.to_string(), lo.to_string(), hi.to_string(), held);
    assert_eq!(
        names(0),
        [
            o("stream", "b", "a", true),
            o("stream", "c", "a", true),
            o("stream", "d", "a", true),
            o("stream", "c", "b", true),
            o("stream", "c", "d", true),
            o("random", "b", "a", false),
        ]
    );
    assert_eq!(names(1), [o("stream", "c@1.5", "a@1.5", true)]);
    let cmp = comparisons(&l, &r);
    assert!(
        cmp.contains("not as published: random: b < a published (20.0 vs 50.0), ours reversed (6.00 vs 5.00 ms)"),
        "{cmp}"
    );
    // With a 1 % tie tolerance b and d (100 vs 103) are an ordering: ours 25 vs 20, reversed;
    // ours equal is not the published order either.
    let tight = load(&VERDICTS.replace("reference = \"c\"", "reference = \"c\"\ntie = 0.01")).unwrap();
    let v = verdicts(&tight, &synthetic(&tight));
    let bd = v[0].orderings.iter().find(|o| o.lower == "b" && o.higher == "d").unwrap();
    assert!(!bd.held() && bd.ours == Some((25.0, 20.0)), "{bd}");
    assert_eq!(v[0].ordering_counts(), (5, 7));
    let mut r = synthetic(&tight);
    r.insert(id_of(&tight, "stream", "d", 1.0), serde_json::json!({ "sim_ns": 25e6 }));
    let bd = verdicts(&tight, &r)[0].orderings.iter().find(|o| o.lower == "b" && o.higher == "d").cloned().unwrap();
    assert!(!bd.held() && bd.to_string().contains("ours tied (25.0 vs 25.0 ms)"), "{bd}");
    // Reversed by less than the printed figures show: more digits.
    r.insert(id_of(&tight, "stream", "d", 1.0), serde_json::json!({ "sim_ns": 24.999e6 }));
    let bd = verdicts(&tight, &r)[0].orderings.iter().find(|o| o.lower == "b" && o.higher == "d").cloned().unwrap();
    assert!(bd.to_string().contains("ours reversed (25.0000 vs 24.9990 ms)"), "{bd}");
}

#[test]
fn the_final_line_counts_every_table_and_a_missing_point_fails() {
    let l = load(VERDICTS).unwrap();
    let mut r = synthetic(&l);
    let line = reproduction(&verdicts(&l, &r)).unwrap();
    assert_eq!(
        line,
        "reproduction, per table:\n  abs: 2 of 3 cells within 2x; 5 of 6 orderings as published\n  slow: 2 of 2 cells within 2x; 1 of 1 orderings as published\nreproduction: 4 of 5 published cells within 2x; 6 of 7 orderings as published\n"
    );
    // stream's `a` at 1.0 failed: its cell and the three orderings it is in fail.
    r.insert(id_of(&l, "stream", "a", 1.0), serde_json::json!({ "error": "boom" }));
    let v = verdicts(&l, &r);
    assert_eq!(v[0].cell_counts(), (1, 3));
    assert!(
        reproduction(&v)
            .unwrap()
            .ends_with("reproduction: 3 of 5 published cells within 2x; 3 of 7 orderings as published\n")
    );
    // The reference missing fails every counted cell of its row.
    r.remove(&id_of(&l, "stream", "c", 1.0));
    assert_eq!(verdicts(&l, &r)[0].cell_counts(), (0, 3));
    assert!(comparisons(&l, &r).contains("- | 400 miss"));
    // No table with published values: no line.
    assert_eq!(reproduction(&verdicts(&load(SMALL.split("[[table]]").next().unwrap()).unwrap(), &r)), None);
}

/// VERDICTS with a table published as a shape: `c < b` and `b < a` in every row.
fn shaped() -> String {
    format!(
        "{VERDICTS}[[table]]\ntitle = \"shape\"\ncolumns = [\"c\", \"b\", \"a\"]\nshape = [[\"c\", \"b\"], [\"b\", \"a\"]]\nsource = \"a paper, figure 1\"\n"
    )
}

#[test]
fn a_published_shape_is_an_ordering_in_every_row_and_has_no_cells() {
    let l = load(&shaped()).unwrap();
    let r = synthetic(&l);
    let v = verdicts(&l, &r);
    assert_eq!(v.iter().map(|t| t.title.as_str()).collect::<Vec<_>>(), ["abs", "slow", "shape"]);
    let s = &v[2];
    assert!(s.cells.iter().all(|c| !c.2.counted()), "{:?}", s.cells);
    let got: Vec<(&str, &str, &str, bool)> =
        s.orderings.iter().map(|o| (o.row.as_str(), o.lower.as_str(), o.higher.as_str(), o.held())).collect();
    // stream: c 1 < b 25 < a 40, both held; random: c 1 < b 6 held, b 6 < a 5 reversed.
    assert_eq!(
        got,
        [
            ("stream", "c", "b", true),
            ("stream", "b", "a", true),
            ("random", "c", "b", true),
            ("random", "b", "a", false)
        ]
    );
    assert_eq!(s.counts(), "0 of 0 cells within 2x; 3 of 4 orderings as published");
    assert!(
        reproduction(&v)
            .unwrap()
            .ends_with("reproduction: 4 of 5 published cells within 2x; 9 of 11 orderings as published\n")
    );
    let cmp = comparisons(&l, &r);
    assert!(cmp.contains("published shape, every row: c < b, b < a; source: a paper, figure 1"), "{cmp}");
    assert!(
        cmp.contains("not as published: random: b < a published (shape), ours reversed (6.00 vs 5.00 ms)"),
        "{cmp}"
    );
    // A shape's cells are ours alone.
    let shape = &cmp[cmp.find("\nshape\n").unwrap()..];
    let random = shape.lines().find(|x| x.starts_with("  random")).unwrap();
    assert_eq!(random.split_whitespace().collect::<Vec<_>>(), ["random", "1.0", "6.0", "5.0"], "{shape}");
}

#[test]
fn a_shape_is_checked_when_the_file_loads() {
    let e = err(&shaped().replace("source = \"a paper, figure 1\"\n", ""));
    assert!(e.contains("`table[3].source`: a `shape` needs its `source`"), "{e}");
    let e = err(&shaped().replace("[[\"c\", \"b\"]", "[[\"c\", \"d\"]"));
    assert!(e.contains("`table[3].shape`: `d` is not a column; columns: c, b, a"), "{e}");
    let e = err(&shaped().replace("[[\"c\", \"b\"]", "[[\"c\", \"c\"]"));
    assert!(e.contains("`table[3].shape`: `[c, c]` orders a column against itself"), "{e}");
    let e = err(&shaped().replace("source = ", "published = { stream = [1, 2, 3] }\nsource = "));
    assert!(e.contains("`table[3].shape`: a shape is published orderings without values"), "{e}");
    let e = err(&VERDICTS.replace("title = \"nothing published\"", "title = \"nothing published\"\nsource = \"x\""));
    assert!(e.contains("`table[2].source`: `source` names where a `shape` is published"), "{e}");
}

#[test]
fn tables_are_checked_when_the_file_loads() {
    let e = err(&VERDICTS.replace("reference = \"c\"\n", ""));
    assert!(e.starts_with("exp.toml:23:1: `table[0].reference`: the cells are absolute"), "{e}");
    let e = err(&VERDICTS.replace("reference = \"c\"", "reference = \"e\""));
    assert!(e.starts_with("exp.toml:27:13: `table[0].reference`: `e` is not a column; columns: a, b, c, d"), "{e}");
    let e = err(&VERDICTS.replace("normalise = \"c\"", "normalise = \"c\"\nreference = \"a@1.5\""));
    assert!(e.contains("`table[1].reference`: a `normalise` table's cells are ratios already"), "{e}");
    let e = err(&VERDICTS.replace("random = [50", "randum = [50"));
    assert!(e.contains("`table[0].published`: row `randum` names no workload; workloads: stream, random"), "{e}");
    let e = err(&VERDICTS.replace("[50, 20, -1, -1]", "[50, 20, -1]"));
    assert!(e.contains("row `random` has 3 values for 4 columns"), "{e}");
    let e = err(&VERDICTS.replace("[\"c@1.5\"", "[\"e@1.5\""));
    assert!(e.contains("`table[1].columns`: `e@1.5`: no policy `e`; policies: a, b, c, d"), "{e}");
    let e = err(&VERDICTS.replace("[\"c@1.5\"", "[\"c@1.3\""));
    assert!(e.contains("`c@1.3`: no point of `c` at oversubscription 1.3; it runs at 1, 1.5"), "{e}");
    // Each ratio once, whatever the repetitions; a header with a comment is still found.
    let e = err(&VERDICTS
        .replace("[\"c@1.5\"", "[\"c@1.3\"")
        .replace("mechanism = \"host\"", "mechanism = \"host\"\nrepeat = 2"));
    assert!(e.ends_with("it runs at 1, 1.5"), "{e}");
    let e = err(&VERDICTS
        .replace("reference = \"c\"\n", "")
        .replace("[[table]]\ntitle = \"abs\"", "[[table]] # (A)\ntitle = \"abs\""));
    assert!(e.starts_with("exp.toml:23:1: `table[0].reference`"), "{e}");
    let e = err(&VERDICTS.replace("[\"c@1.5\"", "[\"c@x\""));
    assert!(e.contains("`c@x`: `x` after '@' is not a ratio"), "{e}");
    let e = err(&VERDICTS.replace("reference = \"c\"", "reference = \"c\"\ntie = 5"));
    assert!(e.contains("`table[0].tie`: 5: expected 0 to 1"), "{e}");
}

/// With `repeat = 2` every point runs twice: results.csv's `repetition` column says which run a
/// row is and `seeds` gives each workload's seed, shifted for the second repetition.
#[test]
fn the_csv_names_each_rows_repetition_and_its_seeds() {
    let l = load(&SMALL.replace("mechanism = \"host\"", "mechanism = \"host\"\nrepeat = 2")).unwrap();
    assert_eq!(l.points.len(), 16);
    let text = csv(&l, &Results::new());
    let mut rd = ::csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<Vec<String>> = rd.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
    assert_eq!(rows.len(), 16);
    let (label, rep, seeds) = (col("label"), col("repetition"), col("seeds"));
    // The same point's two repetitions: one label but the `/rN` suffix, repetitions 0 and 1,
    // and their seeds differ.
    let first = rows.iter().find(|r| r[label] == "od/stream/1/r0").unwrap_or_else(|| panic!("{text}"));
    let second = rows.iter().find(|r| r[label] == "od/stream/1/r1").unwrap();
    assert_eq!((first[rep].as_str(), second[rep].as_str()), ("0", "1"));
    assert!(!first[seeds].is_empty() && first[seeds] != second[seeds], "{first:?} {second:?}");
    assert_eq!(rows.iter().filter(|r| r[rep] == "1").count(), 8);
    // The units say what the columns hold.
    assert!(csv_columns(&Results::new()).contains("repetition,index,"), "{}", csv_columns(&Results::new()));
}

/// The experiment and results both renderings of the comparison tables are checked on: the
/// verdict tables with two ratio columns, one point's result missing.
fn pinned_tables() -> (Loaded, Results) {
    let l =
        load(&VERDICTS.replace("reference = \"c\"", "reference = \"c\"\nratios = [[\"a\", \"b\"], [\"d\", \"c\"]]"))
            .unwrap();
    let mut r = synthetic(&l);
    r.remove(&id_of(&l, "random", "b", 1.0));
    (l, r)
}

/// The comparison tables as summary.txt holds them, byte for byte (the terminal gets them
/// through comfy-table, `tables::comparisons_terminal`).
#[test]
fn the_comparison_tables_text_is_pinned() {
    let (l, r) = pinned_tables();
    let cmp = comparisons(&l, &r);
    assert_eq!(cmp, PINNED);
}

/// The terminal's tables (comfy-table) hold every header and cell of the text's, whole, in
/// their rows and columns, and the same titles, legends and notes.
#[test]
fn the_terminal_tables_hold_each_header_and_cell() {
    let (l, r) = pinned_tables();
    let term = tables::comparisons_terminal(&l, &r);
    // A table's lines between its outer borders, cut at the column rules.
    let rows: Vec<Vec<&str>> = term
        .lines()
        .filter_map(|line| line.strip_prefix("  │"))
        .map(|line| line.trim_end_matches('│').split('┆').map(str::trim).collect())
        .collect();
    let row = |first: &str, n: usize| rows.iter().filter(|r| r[0] == first).nth(n).cloned().unwrap_or_default();
    assert_eq!(row("workload", 0), ["workload", "a", "b", "c", "d", "a ÷ b", "d ÷ c"], "{term}");
    assert_eq!(
        row("stream", 0),
        [
            "stream",
            "40.0 | 400 ok",
            "25.0 | 100 2.50x",
            "1.0 | 10 ref",
            "20.0 | 103 ok",
            "1.60 | 4.00",
            "20.00 | 10.30"
        ],
        "{term}"
    );
    assert_eq!(
        row("random", 0),
        ["random", "5.0 | 50", "- | 20", "1.0 | -", "1.0 | -", "- | 2.50", "1.00 | -"],
        "{term}"
    );
    assert_eq!(row("workload", 1), ["workload", "c@1.5", "a@1.5"], "{term}");
    assert_eq!(row("stream", 1), ["stream", "4.00 | 3.00 ok", "50.00 | 100.00 ok"], "{term}");
    assert_eq!(row("workload", 2), ["workload", "a", "b"], "{term}");
    assert_eq!(row("random", 2), ["random", "5.0 | -", "- | -"], "{term}");
    assert_eq!(rows.len(), 3 + 3 + 3, "a header and two rows per table: {term}");
    // Everything around the tables is the text's.
    let outside = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| {
                !l.starts_with("  ") || l.starts_with("  (") || l.starts_with("  verdict") || l.starts_with("  not as")
            })
            .map(String::from)
            .collect()
    };
    assert_eq!(outside(&term), outside(&comparisons(&l, &r)));
    assert!(term.contains("\nabs\n  (each cell: ours in ms | published in us,"), "{term}");
    assert!(term.contains("  not as published: random: b < a published (20.0 vs 50.0), ours missing\n"), "{term}");
    // Names are whole on the terminal, where the text cuts them to the column.
    let long = "a-policy-name-longer-than-a-column";
    let named = load(
        &VERDICTS.replace("name = \"d\"", &format!("name = \"{long}\"")).replace("\"d\"]", &format!("\"{long}\"]")),
    )
    .unwrap();
    let term = tables::comparisons_terminal(&named, &synthetic(&named));
    assert!(term.lines().any(|l| l.contains(&format!("┆ {long} │"))), "{term}");
    assert!(comparisons(&named, &synthetic(&named)).contains(&format!(" {}…\n", &long[..27])));
}

/// [`the_comparison_tables_text_is_pinned`]'s tables, as the code before comfy-table wrote them.
const PINNED: &str = concat!(
    "\n",
    "abs\n",
    "  (each cell: ours in ms | published in us, then ok when ours ÷ ours[c] against published ÷ published[c] is within 2x, else that ratio; ratios: ours | published)\n",
    "                                          a                            b                            c                            d                    a ÷ b                    d ÷ c\n",
    "  stream                      40.0 | 400 ok             25.0 | 100 2.50x                 1.0 | 10 ref                20.0 | 103 ok              1.60 | 4.00            20.00 | 10.30\n",
    "  random                           5.0 | 50                       - | 20                      1.0 | -                      1.0 | -                 - | 2.50                 1.00 | -\n",
    "  verdict: 2 of 3 cells within 2x; 5 of 6 orderings as published\n",
    "  not as published: random: b < a published (20.0 vs 50.0), ours missing\n",
    "\n",
    "slow\n",
    "  (each cell: ours in × | published in , then ok when ours against published is within 2x, else that ratio)\n",
    "                                      c@1.5                        a@1.5\n",
    "  stream                     4.00 | 3.00 ok            50.00 | 100.00 ok\n",
    "  random                           1.00 | -                     1.00 | -\n",
    "  verdict: 2 of 2 cells within 2x; 1 of 1 orderings as published\n",
    "\n",
    "nothing published\n",
    "  (each cell: ours in ms | -, nothing published to compare)\n",
    "                                    a                      b\n",
    "  stream                     40.0 | -               25.0 | -\n",
    "  random                      5.0 | -                  - | -\n",
);

/// An experiment with a workload label longer than the summary's column (28) and a policy's
/// longer than its (16), and results of every kind the per-point table shows: whole, with a
/// workload stopped, a rerun note longer than the text keeps and a truncated trace, an error
/// with and without a rerun note, and none.
fn summary_case() -> (Loaded, Results) {
    let text = SMALL
        .split("[[table]]")
        .next()
        .unwrap()
        .replace("updates = 2", "updates = 2\nname = \"random-updates-of-a-long-named-array\"")
        .replace("name = \"tree\"", "name = \"tree-placement-long-name\"");
    let l = load(&text).unwrap();
    let id = |i: usize| l.points[i].id;
    let whole = |i: usize, k: u64| {
        serde_json::json!({
            "id": id(i), "sim_ns": 1_234_567.0 * k as f64, "mechanism_ns": 98_765_432.1 / k as f64,
            "dev_faults": 10 * k, "cpu_faults": k, "to_dev": 20 * k, "evicted": 3 * k, "to_cpu": 4 * k,
            "local_lines": 300 * k, "remote_lines": 100, "workloads": [{ "name": "stream" }],
        })
    };
    let mut r = Results::new();
    r.insert(id(0), whole(0, 1));
    let mut noted = whole(1, 2);
    noted["workloads"] = serde_json::json!([{ "name": "stream", "error": "out of device memory" }, { "name": "x" }]);
    noted["rerun"] = Json::from(format!("rerun in a fresh guest: point 0 failed ({})", "why ".repeat(30)));
    noted["trace_dropped"] = Json::from(5);
    noted["trace_events"] = Json::from(100);
    r.insert(id(1), noted);
    r.insert(
        id(2),
        serde_json::json!({ "id": id(2), "error": "boom, \"quoted\"", "rerun": "rerun in a fresh guest: point 1" }),
    );
    r.insert(id(4), serde_json::json!({ "id": id(4), "error": "no result: the guest stopped" }));
    for i in 5..8 {
        let mut w = whole(i, i as u64);
        w["local_lines"] = Json::from(0);
        w["remote_lines"] = Json::from(0);
        r.insert(id(i), w);
    }
    (l, r)
}

/// The per-point table as summary.txt holds it, byte for byte (the terminal gets it through
/// comfy-table).
#[test]
fn the_summary_text_is_pinned() {
    let (l, r) = summary_case();
    assert_eq!(summary(&l, &r), PINNED_SUMMARY);
}

/// The terminal's per-point table (comfy-table) holds each header and each point's cells, whole,
/// in its rows and columns; a point without results says so in its first measured column, and
/// every note follows the table after its point's label, whole.
#[test]
fn the_terminal_summary_holds_each_header_and_cell() {
    let (l, r) = summary_case();
    let term = summary_terminal(&l, &r);
    let rows: Vec<Vec<&str>> = term
        .lines()
        .filter_map(|line| line.strip_prefix('│'))
        .map(|line| line.trim_end_matches('│').split('┆').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 1 + 8, "a header and a row per point: {term}");
    assert_eq!(rows[0], SUMMARY_COLUMNS, "{term}");
    let long = "random-updates-of-a-long-named-array";
    let pol = "tree-placement-long-name";
    let want: [[&str; 10]; 8] = [
        ["stream", "od", "1", "1.23", "98.8", "11", "20", "3", "4", "25.0"],
        [long, "od", "1", "2.47", "49.4", "22", "40", "6", "8", "14.3"],
        ["stream", pol, "1", "error", "-", "-", "-", "-", "-", "-"],
        [long, pol, "1", "no result", "-", "-", "-", "-", "-", "-"],
        ["stream", "od", "1.5", "error", "-", "-", "-", "-", "-", "-"],
        [long, "od", "1.5", "6.17", "19.8", "55", "100", "15", "20", "0.0"],
        ["stream", pol, "1.5", "7.41", "16.5", "66", "120", "18", "24", "0.0"],
        [long, pol, "1.5", "8.64", "14.1", "77", "140", "21", "28", "0.0"],
    ];
    for (got, want) in rows[1..].iter().zip(want) {
        assert_eq!(got, &want, "{term}");
    }
    // The cells are the text's, the names whole.
    let text = summary(&l, &r);
    for row in &want {
        if row[3] != "error" && row[3] != "no result" {
            assert!(
                text.lines().any(|t| t.split_whitespace().skip(2).eq(row[2..].iter().copied())),
                "{row:?} in {text}"
            );
        }
    }
    // Under the table, each note after its point's label, the rerun note whole.
    let notes: Vec<&str> = term.lines().skip_while(|l| !l.starts_with('└')).skip(1).collect();
    let label = |i: usize| l.points[i].label.as_str();
    let rerun = format!("rerun in a fresh guest: point 0 failed ({})", "why ".repeat(30));
    assert_eq!(
        notes,
        [
            format!("  {}: workload stream stopped: out of device memory", label(1)),
            format!("  {}: ({rerun})", label(1)),
            format!(
                "  {}: trace truncated: the first 100 events kept, 5 dropped at the cap (raise run.trace to keep them)",
                label(1)
            ),
            format!("  {}: error: boom, \"quoted\"", label(2)),
            format!("  {}: (rerun in a fresh guest: point 1)", label(2)),
            format!("  {}: error: no result: the guest stopped", label(4)),
        ],
        "{term}"
    );
}

/// [`the_summary_text_is_pinned`]'s table, as the code before comfy-table wrote it.
const PINNED_SUMMARY: &str = concat!(
    "workload                     policy             over      sim ms    mech ms   faults   to dev  evicted   to cpu remote%\n",
    "stream                       od                    1        1.23       98.8       11       20        3        4    25.0\n",
    "random-updates-of-a-long-na… od                    1        2.47       49.4       22       40        6        8    14.3\n",
    "    workload stream stopped: out of device memory\n",
    "    (rerun in a fresh guest: point 0 failed (why why why why why why why why why why why why why why why why why w…)\n",
    "    trace truncated: the first 100 events kept, 5 dropped at the cap (raise run.trace to keep them)\n",
    "stream                       tree-placement-long-name      1 error: boom, \"quoted\"\n",
    "    (rerun in a fresh guest: point 1)\n",
    "random-updates-of-a-long-named-array tree-placement-long-name      1 (no result)\n",
    "stream                       od                  1.5 error: no result: the guest stopped\n",
    "random-updates-of-a-long-na… od                  1.5        6.17       19.8       55      100       15       20     0.0\n",
    "stream                       tree-placement-…    1.5        7.41       16.5       66      120       18       24     0.0\n",
    "random-updates-of-a-long-na… tree-placement-…    1.5        8.64       14.1       77      140       21       28     0.0\n",
);

/// The tenants experiment's points run two processes, and each tenant also alone; workloads.csv
/// has a row per workload with its process, counters and slowdown against its tenant alone, and
/// summary.txt lists each tenant's share under its point.
#[test]
fn each_tenant_has_its_row_its_share_and_its_slowdown() {
    let l = super::load(&root().join("experiments/tenants.toml"), &root()).unwrap_or_else(|e| panic!("{e}"));
    let p = &l.points[0];
    let procs: Vec<i64> = p.workloads.iter().map(|(_, w)| w.int("process")).collect();
    assert_eq!(procs, [0, 0, 1, 1], "{:?}", p.workloads);
    // Each tenant alone (its two workloads without the other's) follows the together point,
    // under the same policy and ratio.
    let (pol, o) = (&l.keys[0].1, l.keys[0].2);
    let alone = |label: &str| {
        (0..l.keys.len()).find(|&j| l.keys[j] == (label.to_string(), pol.clone(), o)).map(|j| l.points[j].id).unwrap()
    };
    let w = |kind: &str, process: u64, end_ns: f64, f: u64| serde_json::json!({ "name": kind, "process": process, "pages": 256, "end_ns": end_ns, "faults": f, "to_dev": f + 2, "to_cpu": 2, "evicted": 1 });
    let mut r = Results::new();
    r.insert(
        p.id,
        serde_json::json!({
            "id": p.id, "sim_ns": 2e6, "mechanism_ns": 1e6,
            "workloads": [w("stream", 0, 1.5e6, 7), w("random", 0, 1e6, 8), w("zipf", 1, 2e6, 5), w("bfs", 1, 2e6, 6)],
        }),
    );
    r.insert(
        alone("A-stream+A-random"),
        serde_json::json!({ "workloads": [{ "name": "stream", "end_ns": 1e6 }, { "name": "random", "end_ns": 0.5e6 }] }),
    );
    let csv = workloads_csv(&l, &r);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 7, "{csv}");
    assert!(rows[1].contains(",A-stream,0,256,1.500,7,9,2,1,1.000,1.500,"), "{csv}");
    assert!(rows[2].contains(",A-random,0,256,1.000,8,10,2,1,0.500,2.000,"), "{csv}");
    // The others alone have no result: no slowdown.
    assert!(rows[3].contains(",B-zipf,1,256,2.000,5,7,2,1,,,"), "{csv}");
    let sum = summary(&l, &r);
    assert!(
        sum.contains(
            "A-stream (process 0): 7 faults, 9 pages to devices, 1 evicted, ends at 1.50 ms (1.50x its time alone)"
        ),
        "{sum}"
    );
    assert!(sum.contains("B-bfs (process 1): 6 faults, 8 pages to devices, 1 evicted, ends at 2.00 ms\n"), "{sum}");
}

/// `alone` without `together` is refused, naming the field.
#[test]
fn alone_needs_together() {
    let e = load(&SMALL.replace("[sweep]", "[sweep]\nalone = true")).unwrap_err();
    assert!(e.contains("sweep.alone") && e.contains("together = true"), "{e}");
}
