//! The Perfetto trace: slices on a track nest, in whole nanoseconds, and a point whose events
//! passed the cap says so.

use super::*;

use super::tests::root;

fn default_exp() -> Loaded {
    load(&root().join("experiments/default.toml"), &root()).unwrap()
}

/// The complete events per (pid, tid), as integer ns (start, end).
fn slices(trace: &str) -> BTreeMap<(u64, u64), Vec<(i64, i64)>> {
    let t: Json = serde_json::from_str(trace).unwrap();
    let mut out: BTreeMap<(u64, u64), Vec<(i64, i64)>> = BTreeMap::new();
    for e in t["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X") {
        // µs with three decimals: whole ns once scaled back.
        let ns = |k: &str| {
            let us = e[k].as_f64().unwrap();
            let n = (us * 1000.0).round();
            assert!((us * 1000.0 - n).abs() < 1e-3, "{k} = {us} µs is not whole ns");
            n as i64
        };
        let (s, d) = (ns("ts"), ns("dur"));
        assert!(d >= 1, "{e}");
        out.entry((e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap())).or_default().push((s, s + d));
    }
    out
}

/// Every two slices of a track are disjoint or one holds the other.
fn assert_nested(tracks: &BTreeMap<(u64, u64), Vec<(i64, i64)>>) {
    for (k, v) in tracks {
        for (i, a) in v.iter().enumerate() {
            for b in &v[i + 1..] {
                let disjoint = a.1 <= b.0 || b.1 <= a.0;
                let nested = (a.0 <= b.0 && b.1 <= a.1) || (b.0 <= a.0 && a.1 <= b.1);
                assert!(disjoint || nested, "track {k:?}: {a:?} and {b:?} overlap without nesting");
            }
        }
    }
}

fn event(point: u32, lane: &str, t: f64, dur: f64, kind: &str) -> Json {
    serde_json::json!({ "point": point, "lane": lane, "t": t, "dur": dur, "kind": kind, "what": "", "pages": 1 })
}

#[test]
fn slices_that_overlap_by_rounding_are_cut_to_nest() {
    let l = default_exp();
    // As the guest prints them (0.1 ns): a phase, a fault batch ending 0.1 ns after it, the
    // next phase starting 0.1 ns before the first ends, and a slice within.
    let events = [
        event(0, "dev0", 1000.0, 5000.0, "phase"),
        event(0, "dev0", 5900.0, 100.1, "faults"),
        event(0, "dev0", 5999.9, 3000.0, "phase"),
        event(0, "dev0", 6500.0, 200.0, "faults"),
        event(0, "link0", 2000.3, 0.2, "migrate"),
    ];
    let text = trace(&l, &Results::new(), &events);
    let tracks = slices(&text);
    assert_nested(&tracks);
    let dev0 = &tracks[&(0, 1)];
    assert_eq!(dev0.len(), 4);
    // Cut at the enclosing phase's end, not moved or dropped.
    assert!(dev0.contains(&(1000, 6000)) && dev0.contains(&(5900, 6000)), "{dev0:?}");
    // A slice shorter than a nanosecond still shows.
    assert_eq!(tracks[&(0, 2)], [(2000, 2001)]);
}

#[test]
fn a_real_traced_run_nests_on_every_track() {
    let mut l = default_exp();
    let p = &mut l.points[7];
    p.run.set("trace", hmm::place::params::Value::Int(5000));
    let prepared = p.prepare(&p.devices).unwrap();
    let mut m = hmm::place::engine::host::HostStack::new(prepared.pages, &prepared.capacities, Box::new(|| 0)).unwrap();
    let o = prepared.run(&mut m).unwrap();
    let events: Vec<Json> =
        o.trace.iter().map(|e| serde_json::from_str(&hmm::place::spec::trace_json(p.id, e)).unwrap()).collect();
    assert!(events.len() > 100, "{}", events.len());
    let tracks = slices(&trace(&l, &Results::new(), &events));
    assert_eq!(tracks.values().map(Vec::len).sum::<usize>(), events.len());
    assert_nested(&tracks);
}

#[test]
fn a_trace_cut_at_the_cap_is_reported() {
    let l = default_exp();
    let mut results = Results::new();
    results.insert(0, serde_json::json!({ "id": 0, "trace_events": 2, "trace_dropped": 7, "sim_ns": 1e6 }));
    results.insert(1, serde_json::json!({ "id": 1, "trace_events": 1, "trace_dropped": 0, "sim_ns": 1e6 }));
    let events = [
        event(0, "dev0", 0.0, 10.0, "phase"),
        event(0, "dev0", 20.0, 10.0, "phase"),
        event(1, "dev0", 0.0, 5.0, "phase"),
    ];
    let t: Json = serde_json::from_str(&trace(&l, &results, &events)).unwrap();
    let ev = t["traceEvents"].as_array().unwrap();
    let notes: Vec<&Json> = ev.iter().filter(|e| e["ph"] == "i").collect();
    assert_eq!(notes.len(), 1, "{ev:?}");
    assert_eq!(notes[0]["pid"], 0);
    assert!(notes[0]["name"].as_str().unwrap().contains("7 events dropped after the first 2"), "{}", notes[0]);
    let name = |pid: u64| {
        ev.iter().find(|e| e["name"] == "process_name" && e["pid"] == pid).unwrap()["args"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(name(0).ends_with("(truncated: 7 events dropped)"), "{}", name(0));
    assert!(!name(1).contains("truncated"));
    assert_eq!(truncated_traces(&results), [(0, 2, 7)]);
    let s = summary(&l, &results);
    assert_eq!(s.matches("trace truncated").count(), 1, "{s}");
    assert!(s.contains("2 events kept, 7 dropped"), "{s}");
}
