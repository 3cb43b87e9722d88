//! Decoding the guest's output: the machine-readable `@@` lines among its log lines.

use crate::experiment::Results;
use serde_json::Value;

/// The JSON payload of the first line tagged `tag` (e.g. `"@@BOOT "`).
pub fn json_line(lines: &[String], tag: &str) -> Option<Value> {
    lines.iter().find_map(|l| l.strip_prefix(tag)).and_then(|j| serde_json::from_str(j).ok())
}

/// The `@@POINT` results by point id, and the `@@TRACE` events, in the order printed.
pub fn points_and_traces(lines: &[String]) -> (Results, Vec<Value>) {
    let mut results = Results::new();
    let mut traces = Vec::new();
    for line in lines {
        if let Some(j) = line.strip_prefix("@@POINT ").and_then(|j| serde_json::from_str::<Value>(j).ok()) {
            if let Some(id) = j["id"].as_u64() {
                results.insert(id as u32, j);
            }
        } else if let Some(j) = line.strip_prefix("@@TRACE ").and_then(|j| serde_json::from_str::<Value>(j).ok()) {
            traces.push(j);
        }
    }
    (results, traces)
}

/// The `@@BENCH` results that carry an `op` (not the final `{"done": true}`).
pub fn bench_results(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| l.split_once("@@BENCH ").map(|(_, j)| j))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v.get("op").is_some())
        .collect()
}
