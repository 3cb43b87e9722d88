//! Tests of the validation gaps issue 25 named: each mistake below was accepted (or reported
//! without its field) before, and must now be an error naming the file, line and field and
//! saying what is allowed. Also the machine files' errors, the missing-file listings and
//! `--check` / `--list` ([`super::plan`]).

use super::*;
use crate::machine::{Machine, field_at};

use super::tests::root;

/// Two workloads, two policies, two ratios, on the host: 8 points.
const BASE: &str = r#"
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
[[policy]]
name = "tree"
placement = "tree"
[sweep]
oversubscription = [1.0, 1.5]
[[table]]
title = "t"
columns = ["od", "tree", "tree@1.5"]
normalise = "tree"
published = { stream = [40.0, 1.0, -1] }
"#;

fn load(text: &str) -> Result<Loaded, String> {
    load_str(Path::new("exp.toml"), text, &root())
}

fn err(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn the_base_file_loads() {
    assert_eq!(load(BASE).unwrap().points.len(), 8);
}

#[test]
fn two_workloads_with_one_label_are_rejected_unless_named_apart() {
    // Two `stream`s: plots and tables showed only the first.
    let two = BASE.replace("kind = \"random\"\nupdates = 2", "kind = \"stream\"\niterations = 2");
    let e = err(&two);
    assert!(
        e.starts_with(
            "exp.toml:8:8: `workload[1].name`: workload[0] has this label (its kind, without a `name`) already"
        ),
        "{e}"
    );
    assert!(e.contains("give each a distinct `name = \"...\"`"), "{e}");
    let named = two.replace("iterations = 2", "iterations = 2\nname = \"stream-2\"");
    let l = load(&named).unwrap();
    assert!(l.keys.iter().any(|k| k.0 == "stream-2"), "{:?}", l.keys);
    // Two workloads given the same name.
    let e =
        err(&named.replace("kind = \"stream\"\n[[workload]]", "kind = \"stream\"\nname = \"stream-2\"\n[[workload]]"));
    assert!(e.contains("`workload[1].name`: workload[0] has this name already"), "{e}");
    // A name that is not a label.
    let e = err(&BASE.replace("updates = 2", "updates = 2\nname = 3"));
    assert!(e.contains("`workload[1].name`: a label: a non-empty string"), "{e}");
    let e = err(&BASE.replace("updates = 2", "updates = 2\nname = \"a+b\""));
    assert!(e.contains("without '+' or '/'"), "{e}");
}

#[test]
fn repeated_ratios_are_rejected() {
    let e = err(&BASE.replace("[1.0, 1.5]", "[1.0, 1.5, 1.0]"));
    assert!(e.starts_with("exp.toml:17:20: `sweep.oversubscription`: 1 is given twice; give each ratio once"), "{e}");
    let e = err(&BASE.replace("placement = \"tree\"", "placement = \"tree\"\noversubscription = [1.5, 1.5]"));
    assert!(e.contains("`policy[1].oversubscription`: 1.5 is given twice"), "{e}");
}

#[test]
fn points_per_boot_must_be_positive() {
    let e = err(&BASE.replace("mechanism = \"host\"", "mechanism = \"host\"\npoints_per_boot = 0"));
    assert!(e.starts_with("exp.toml:5:19: `points_per_boot`: 0: expected 1 to 1000"), "{e}");
    assert!(load(&BASE.replace("mechanism = \"host\"", "mechanism = \"host\"\npoints_per_boot = 1")).is_ok());
}

#[test]
fn a_policy_label_with_an_at_sign_is_rejected() {
    // `a@b` would read as policy `a` at ratio `b` in a table column.
    let e = err(&BASE.replace("name = \"od\"", "name = \"od@1\"").replace("[\"od\",", "[\"tree\","));
    assert!(e.contains("`policy[0].name`: give a label without '@'"), "{e}");
}

#[test]
fn type_errors_name_the_field_and_what_is_allowed() {
    let e = err(&BASE.replace("mechanism = \"host\"", "mechanism = \"host\"\nrepeat = \"3\""));
    assert!(
        e.starts_with("exp.toml:5:10: `repeat`: invalid type: string \"3\"; expected a whole number, 0 or more"),
        "{e}"
    );
    let e = err(&BASE.replace("[1.0, 1.5]", "[1.0, 1.5]\ntogether = 1"));
    assert!(e.starts_with("exp.toml:18:12: `sweep.together`: invalid type: integer `1`; expected a boolean"), "{e}");
    let e = err(&BASE.replace("placement = \"tree\"", "placement = \"tree\"\noversubscription = 1.5"));
    assert!(e.contains("`policy[1].oversubscription`: invalid type: floating point `1.5`; expected a list"), "{e}");
    let e = err(&BASE.replace("title = \"t\"", "title = \"t\"\ntie = \"x\""));
    assert!(e.contains("`table[0].tie`: invalid type: string \"x\"; expected a number"), "{e}");
    let e = err(&BASE.replace("name = \"od\"", "name = 7"));
    assert!(e.contains(":11:8: `policy[0].name`: invalid type: integer `7`; expected a string"), "{e}");
    // Unknown and missing fields name theirs too.
    let e = err(&format!("colour = 1\n{BASE}"));
    assert!(e.starts_with("exp.toml:1:1: `colour`: unknown field `colour`; expected one of"), "{e}");
    let e = err(&BASE.replace("placement = \"on-touch\"\n", ""));
    assert!(e.contains("`policy[0]`: missing field `placement`"), "{e}");
}

#[test]
fn fields_are_found_from_where_an_error_points() {
    let text = "a = 1\n[x]\nb = 2\n[[p]]\nc = { d = 1, e = \"x\" }\n[[p]]\nf = 3 # f\n";
    let at = |s: &str, nth: usize| text.match_indices(s).nth(nth).unwrap().0;
    assert_eq!(field_at(text, at("1", 0)).as_deref(), Some("a"));
    assert_eq!(field_at(text, at("2", 0)).as_deref(), Some("x.b"));
    assert_eq!(field_at(text, at("1", 1)).as_deref(), Some("p[0].c.d"));
    assert_eq!(field_at(text, at("\"x\"", 0)).as_deref(), Some("p[0].c.e"));
    assert_eq!(field_at(text, at("3", 0)).as_deref(), Some("p[1].f"));
    assert_eq!(field_at(text, at("[[p]]", 1)).as_deref(), Some("p[1]"));
    assert_eq!(field_at("", 0), None);
}

#[test]
fn table_mistakes_are_rejected() {
    // Each printed `- | -` before.
    let e = err(&BASE.replace("normalise = \"tree\"", "normalise = \"tre\""));
    assert!(e.contains("`table[0].normalise`: `tre`: no policy `tre`; policies: od, tree"), "{e}");
    let e = err(&BASE.replace("[\"od\", \"tree\", \"tree@1.5\"]", "[\"od\", \"tree\", \"tree@1.25\"]"));
    assert!(
        e.contains("`table[0].columns`: `tree@1.25`: no point of `tree` at oversubscription 1.25; it runs at 1, 1.5"),
        "{e}"
    );
    let e = err(&BASE.replace("[\"od\", \"tree\", \"tree@1.5\"]", "[\"od\", \"tre\", \"tree@1.5\"]"));
    assert!(e.contains("`table[0].columns`: `tre`: no policy `tre`"), "{e}");
    let e = err(&BASE.replace("[40.0, 1.0, -1]", "[40.0, 1.0, -1, 7]"));
    assert!(e.contains("`table[0].published`: row `stream` has 4 values for 3 columns"), "{e}");
    let e = err(&BASE.replace("stream = [40", "strem = [40"));
    assert!(e.contains("`table[0].published`: row `strem` names no workload; workloads: stream, random"), "{e}");
    let e = err(&BASE.replace("title = \"t\"", "title = \"t\"\nratios = [[\"od\", \"x\"]]"));
    assert!(e.contains("`table[0].ratios`: `x`: no policy `x`"), "{e}");
}

fn machine(text: &str, name: &str) -> Result<Machine, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    Machine::load(&p)
}

#[test]
fn a_machine_file_needs_no_description() {
    // It was silently required ("missing field `description`").
    let m = machine("cpus = 1\nmemory = \"512M\"\n", "plain").unwrap();
    assert_eq!(m.description, "plain.toml");
    let m = machine("description = \"mine\"\ncpus = 1\nmemory = \"512M\"\n", "described").unwrap();
    assert_eq!(m.description, "mine");
}

#[test]
fn machine_type_errors_name_the_field() {
    let e = machine("cpus = \"2\"\nmemory = \"512M\"\n", "t1").unwrap_err();
    assert!(e.contains("t1.toml:1:8: `cpus`: invalid type: string \"2\"; expected a whole number, 0 or more"), "{e}");
    let e = machine("cpus = 1\nmemory = \"512M\"\n[[device]]\nname = \"a\"\nmemory = 64\n", "t2").unwrap_err();
    assert!(e.contains("t2.toml:5:10: `device[0].memory`: invalid type: integer `64`; expected a string"), "{e}");
}

#[test]
fn a_missing_file_lists_the_available_ones() {
    let e = Machine::load(&root().join("qemu/defualt.toml")).unwrap_err();
    assert!(e.contains("defualt.toml: no such machine file; the machine files are "), "{e}");
    assert!(e.contains("qemu/default.toml") && e.contains("qemu/numa2.toml"), "{e}");
    let e = super::load(&root().join("experiments/reproduse.toml"), &root()).unwrap_err();
    assert!(e.contains("reproduse.toml: no such experiment file; the experiment files are "), "{e}");
    assert!(e.contains("experiments/reproduce.toml") && e.contains("experiments/default.toml"), "{e}");
    // A machine an experiment names.
    let e = err(&BASE.replace("name = \"small\"", "name = \"small\"\nmachine = \"qemu/nosuch.toml\""));
    assert!(e.contains("`machine`") && e.contains("qemu/default.toml"), "{e}");
}

/// Boots take `points_per_boot` points while there is plenty, then each its share of what is
/// left, so the guests finish together; every point is in exactly one boot.
#[test]
fn boots_shrink_at_the_end_so_the_guests_finish_together() {
    assert_eq!(plan::boot_sizes(215, 10, 2), [[10; 20].as_slice(), &[8, 4, 2, 1]].concat());
    assert_eq!(plan::boot_sizes(12, 4, 1), [4, 4, 4]);
    assert_eq!(plan::boot_sizes(8, 4, 2), [4, 2, 1, 1]);
    assert_eq!(plan::boot_sizes(3, 10, 4), [1, 1, 1]);
    assert_eq!(plan::boot_sizes(0, 10, 2), Vec::<usize>::new());
    for (n, per, jobs) in [(215, 10, 2), (7, 3, 3), (100, 1, 8), (1, 0, 0)] {
        let sizes = plan::boot_sizes(n, per, jobs);
        assert_eq!(sizes.iter().sum::<usize>(), n);
        assert!(sizes.iter().all(|&s| (1..=per.max(1)).contains(&s)));
    }
}

#[test]
fn check_and_list_say_what_a_run_would_do() {
    let l = load(BASE).unwrap();
    let c = plan::check(&l, Path::new("exp.toml"), Path::new("/r"), false, 2);
    assert!(c.starts_with("exp.toml: ok (checked; nothing was built or booted)"), "{c}");
    assert!(c.contains("points      8 (2 workload group(s) x 2 polic(ies) x 2 ratio(s) x 1 repetition(s))"), "{c}");
    // Default points per boot: 4, then shares of what is left: 4, 2, 1, 1; two at once.
    assert!(c.contains("in QEMU guests: 4 boot(s) of up to 4 point(s) (fewer in the last ones), 2 at a time"), "{c}");
    assert!(c.contains("results     /r/target/experiments/small"), "{c}");
    let c = plan::check(&l, Path::new("exp.toml"), Path::new("/r"), true, 3);
    assert!(c.contains("on the host (the HMM stack over the host platform), 3 at a time"), "{c}");
    let untabled = BASE.split("[[table]]").next().unwrap();
    let only =
        load(&untabled.replace("placement = \"tree\"", "placement = \"tree\"\noversubscription = [1.5]")).unwrap();
    let c = plan::check(&only, Path::new("exp.toml"), Path::new("/r"), false, 1);
    assert!(
        c.contains("points      6 (") && c.contains("some policies run at only some ratios or on some workloads"),
        "{c}"
    );
    let list = plan::list(&l);
    let rows: Vec<Vec<&str>> = list.lines().map(|r| r.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["id", "label", "workload", "policy", "ratio", "repetition"]);
    assert_eq!(rows.len(), 9);
    assert_eq!(rows[1], ["0", "od/stream/1", "stream", "od", "1", "0"]);
    assert_eq!(rows[8], ["7", "tree/random/1.5", "random", "tree", "1.5", "0"]);
    let twice = load(&BASE.replace("mechanism = \"host\"", "mechanism = \"host\"\nrepeat = 2")).unwrap();
    let list = plan::list(&twice);
    assert_eq!(
        list.lines().last().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["15", "tree/random/1.5/r1", "random", "tree", "1.5", "1"]
    );
}

/// `[[event]]`s reach every point in time order; a bad time, device or size names its field.
#[test]
fn events_reach_every_point_and_bad_ones_name_their_field() {
    let with = |e: &str| BASE.replace("[sweep]", &format!("{e}\n[sweep]"));
    let two = "[[event]]\nat = \"3ms\"\ndevice = \"dev0\"\nsize = \"512K\"\n[[event]]\nat = \"500us\"\ndevice = \"dev0\"\nsize = \"1M\"";
    let l = load(&with(two)).unwrap();
    for p in &l.points {
        let at: Vec<(u64, u32)> = p.events.iter().map(|e| (e.at_ns, e.pages)).collect();
        assert_eq!(at, [(500_000, 256), (3_000_000, 128)], "{}", p.label);
    }
    let e = err(&with("[[event]]\nat = \"3 parsecs\"\ndevice = \"dev0\"\nsize = \"1M\""));
    assert!(e.contains("event[0].at") && e.contains("unit"), "{e}");
    let e = err(&with("[[event]]\nat = \"1ms\"\ndevice = \"dev1\"\nsize = \"1M\""));
    assert!(e.contains("event[0].device") && e.contains("dev0 to dev0"), "{e}");
    let e = err(&with("[[event]]\nat = \"1ms\"\ndevice = \"dev0\"\nsize = \"1G\""));
    assert!(e.contains("event[0].size") && e.contains("the machine's dev0"), "{e}");
    let e = err(&with("[[event]]\nat = \"1ms\"\ndevice = \"dev0\"\nsize = \"6000\""));
    assert!(e.contains("event[0].size") && e.contains("whole 4 KiB pages"), "{e}");
    let e = err(&with("[[event]]\nat = \"1ms\"\ndevice = \"dev0\""));
    assert!(e.contains("size"), "{e}");
}
