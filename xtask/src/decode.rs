//! Decoding the guest's output: the machine-readable lines (`boot::protocol`'s tagged lines)
//! among its log lines, their JSON payloads parsed; and the guest's lines as a person reads
//! them ([`brief`], [`tail`]): a tagged line (kilobytes of JSON) is shown as a short decoded
//! message, never raw, on the terminal or in an error message (which lands in the CSV).

use crate::experiment::Results;
use boot::protocol::{ExitCode, Tag, parse_line};
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

/// The longest log line [`brief`] shows whole, in characters.
pub const BRIEF: usize = 200;

/// `s` cut to `n` characters, with `…` where it was cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).collect::<String>() + "…" }
}

/// One guest line for a person: a log line as it is (cut to [`BRIEF`] characters), a tagged
/// line (anywhere in the line: a log line of another CPU may come first) as what it carries,
/// e.g. `@@POINT 3 (tree/bfs/1.25): error: DMA timed out` or `@@BOOT: the boot report (2104
/// bytes of JSON)`.
pub fn brief(line: &str) -> String {
    let Some((at, tag)) =
        Tag::ALL.into_iter().filter_map(|t| line.find(t.prefix()).map(|i| (i, t))).min_by_key(|x| x.0)
    else {
        return cut(line, BRIEF);
    };
    let before = cut(&line[..at], BRIEF);
    let payload = &line[at + tag.prefix().len()..];
    let name = tag.prefix().trim_end();
    let bytes = payload.len();
    let Ok(j) = serde_json::from_str::<Value>(payload) else {
        return format!("{before}{name}: {bytes} bytes, not valid JSON (cut off?)");
    };
    let what = match tag {
        Tag::Point => {
            let id = j["id"].as_u64().map_or("?".to_string(), |i| i.to_string());
            let label = j["label"].as_str().map(|l| format!(" ({l})")).unwrap_or_default();
            match j["error"].as_str() {
                Some(e) => format!("{name} {id}{label}: error: {}", cut(e, 160)),
                None => format!("{name} {id}{label}: a result ({bytes} bytes of JSON)"),
            }
        }
        Tag::Boot => format!("{name}: the boot report ({bytes} bytes of JSON)"),
        Tag::Result => {
            format!("{name}: the {} job's result ({bytes} bytes of JSON)", j["job"].as_str().unwrap_or("default"))
        }
        Tag::Bench => match j["op"].as_str() {
            Some(op) => format!("{name}: {op} ({bytes} bytes of JSON)"),
            None => format!("{name}: {}", cut(payload, 60)),
        },
        Tag::Trace => {
            format!("{name}: a trace event of point {}", j["point"].as_u64().map_or("?".to_string(), |i| i.to_string()))
        }
        Tag::Experiment => format!("{name}: {}", cut(payload, 120)),
        Tag::Profile => format!("{name}: a profiler line ({bytes} bytes of JSON)"),
        Tag::Exit => match j["code"].as_u64().and_then(|c| ExitCode::from_port_value(u32::try_from(c).ok()?)) {
            Some(c) => format!("{name}: the kernel leaves with {c:?}"),
            None => format!("{name}: {}", cut(payload, 60)),
        },
        Tag::Host => format!("{name}: a request to the host: {}", cut(payload, 80)),
        Tag::Run => match j["exit_code"].as_i64() {
            Some(c) => format!("{name}: the user program exited with status {c}"),
            None => format!("{name}: the user program was stopped: {}", cut(payload, 100)),
        },
    };
    format!("{before}{what}")
}

/// The last `n` guest lines, each [`brief`], joined by ` | ` (for an error message).
pub fn tail(lines: &[String], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    let v: Vec<String> = lines[start..].iter().map(|l| brief(l)).collect();
    if v.is_empty() { "(none)".to_string() } else { v.join(" | ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::protocol::BENCH_DONE;
    use boot::protocol::json::Json;
    use hmm::place::spec::{self, Point};

    /// A point of the default experiment, run on the HMM stack over the host platform with tracing.
    pub(super) fn point() -> (Point, hmm::place::engine::Outcome) {
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

#[cfg(test)]
mod brief_tests;
