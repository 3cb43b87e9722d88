//! Decoding the guest's output: the machine-readable lines (`boot::protocol`'s tagged lines)
//! among its log lines, their JSON payloads parsed.

use crate::experiment::Results;
use boot::protocol::{Tag, parse_line};
use serde_json::Value;

/// The JSON payload of the first line tagged `tag`.
pub fn json_line(lines: &[String], tag: Tag) -> Option<Value> {
    lines.iter().find_map(|l| tag.payload(l)).and_then(|j| serde_json::from_str(j).ok())
}

/// The `@@POINT` results by point id, and the `@@TRACE` events, in the order printed.
pub fn points_and_traces(lines: &[String]) -> (Results, Vec<Value>) {
    let mut results = Results::new();
    let mut traces = Vec::new();
    for line in lines {
        let Some((tag, payload)) = parse_line(line) else { continue };
        let Ok(j) = serde_json::from_str::<Value>(payload) else { continue };
        match tag {
            Tag::Point => {
                if let Some(id) = j["id"].as_u64() {
                    results.insert(id as u32, j);
                }
            }
            Tag::Trace => traces.push(j),
            _ => {}
        }
    }
    (results, traces)
}

/// The `@@BENCH` results that carry an `op` (not the final `boot::protocol::BENCH_DONE`). The
/// tag is looked for anywhere in a line, in case a log line's start shares it.
pub fn bench_results(lines: &[String]) -> Vec<Value> {
    let tag = Tag::Bench.prefix();
    lines
        .iter()
        .filter_map(|l| l.find(tag).map(|i| &l[i + tag.len()..]))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v.get("op").is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::protocol::BENCH_DONE;
    use boot::protocol::json::Json;
    use hmm::place::spec::{self, Point};

    /// A point of the default experiment, run on the HMM stack over the host platform with tracing.
    fn point() -> (Point, hmm::place::engine::Outcome) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let l = crate::experiment::load(&root.join("experiments/default.toml"), root).unwrap();
        let mut p = l.points[0].clone();
        p.run.set("trace", hmm::place::params::Value::Int(20));
        p.label = "label with \"quotes\", commas\\ and\ttabs".into();
        let prepared = p.prepare(&p.devices).unwrap();
        let mut m =
            hmm::place::engine::host::HostStack::new(prepared.pages, &prepared.capacities, Box::new(|| 0)).unwrap();
        let o = prepared.run(&mut m).unwrap();
        (p, o)
    }

    #[test]
    fn the_kernels_point_and_trace_lines_read_back() {
        let (p, o) = point();
        // What kernel/src/experiment.rs prints: the trace events, the result, then a failed
        // point's error object, among log lines.
        let mut lines: Vec<String> = vec!["experiment: starting".into()];
        lines.extend(o.trace.iter().map(|e| Tag::Trace.line(spec::trace_json(p.id, e)).to_string()));
        lines.push(Tag::Point.line(spec::result_json(&p, &o, "host")).to_string());
        let mut err = Json::<String>::new();
        err.object(|j| {
            j.num("id", 7);
            j.str("error", "point 7 (x): DMA \"timed out\"\nafter 5 s");
            j.str("kind", "mechanism");
        });
        lines.push(Tag::Point.line(err.finish()).to_string());
        lines.push(Tag::Experiment.line("{\"points\":2}").to_string());
        let (results, traces) = points_and_traces(&lines);
        assert_eq!(results.len(), 2);
        let r = &results[&p.id];
        assert_eq!(r["label"], p.label.as_str());
        assert_eq!(r["accesses"].as_u64(), Some(o.stats.accesses));
        assert_eq!(r["procs"].as_array().map(Vec::len), Some(o.procs.len()));
        assert_eq!(r["trace_events"].as_u64(), Some(o.trace.len() as u64));
        assert_eq!(results[&7]["error"], "point 7 (x): DMA \"timed out\"\nafter 5 s");
        assert_eq!(results[&7]["kind"], "mechanism");
        assert!(!o.trace.is_empty());
        assert_eq!(traces.len(), o.trace.len());
        for (t, e) in traces.iter().zip(&o.trace) {
            assert_eq!(t["point"].as_u64(), Some(u64::from(p.id)));
            assert_eq!(t["kind"], e.kind);
            assert_eq!(t["lane"], e.lane.as_str());
        }
    }

    #[test]
    fn the_kernels_boot_and_bench_lines_read_back() {
        let mut j = Json::<String>::new();
        j.object(|j| {
            j.num("ready_ns", 12_345_678u64);
            j.obj("cpu", |j| j.str("brand", "QEMU \"max\""));
            j.arr("cpus", |j| j.item(|j| j.bool("online", true)));
        });
        let lines = vec!["log".to_string(), Tag::Boot.line(j.finish()).to_string()];
        let v = json_line(&lines, Tag::Boot).unwrap();
        assert_eq!(v["ready_ns"].as_u64(), Some(12_345_678));
        assert_eq!(v["cpu"]["brand"], "QEMU \"max\"");
        assert_eq!(v["cpus"][0]["online"], true);
        assert_eq!(json_line(&lines, Tag::Result), None);
        let mut b = Json::<String>::new();
        b.object(|j| {
            j.str("op", "first_touch_4k");
            j.num("ns_per_page", 900);
        });
        let lines = vec![Tag::Bench.line(b.finish()).to_string(), Tag::Bench.line(BENCH_DONE).to_string()];
        let r = bench_results(&lines);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["ns_per_page"].as_u64(), Some(900));
        assert_eq!(serde_json::from_str::<Value>(BENCH_DONE).unwrap()["done"], true);
    }
}
