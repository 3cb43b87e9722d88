//! Whether two runs of the same points decided the same: the host's (`--host`: the HMM stack
//! over the software platform) and the guest's (the real devices). Both execute the same
//! engine and policy code over two platforms, so every decision and counter, and the simulated
//! times the cost model charges for them, must be equal; only the mechanism's own measured time
//! (`mechanism_ns`) and its name differ. [`first_difference`] names the first field that does not
//! agree.

use super::Results;
use serde_json::Value as Json;

/// Fields that are expected to differ between platforms: the measured time of the mechanism and
/// its name.
const PLATFORM_FIELDS: [&str; 2] = ["mechanism_ns", "mechanism"];

/// The first difference between `a` (named `an`) and `b` (`bn`), point by point in id order:
/// `point 3 (label): dev_faults: host 120, guest 118`. `None` when they agree.
pub fn first_difference(an: &str, a: &Results, bn: &str, b: &Results) -> Option<String> {
    for (id, x) in a {
        let label = x["label"].as_str().unwrap_or("");
        let Some(y) = b.get(id) else {
            return Some(format!("point {id} ({label}): in the {an} run only"));
        };
        if let Some(d) = diff("", x, y) {
            return Some(format!("point {id} ({label}): {d}").replace("{a}", an).replace("{b}", bn));
        }
    }
    b.keys().find(|id| !a.contains_key(id)).map(|id| format!("point {id}: in the {bn} run only"))
}

/// The first differing path under `at`, with both values (`{a}` / `{b}` stand for the names).
fn diff(at: &str, x: &Json, y: &Json) -> Option<String> {
    match (x, y) {
        (Json::Object(p), Json::Object(q)) => {
            for (k, v) in p {
                if at.is_empty() && PLATFORM_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match q.get(k) {
                    Some(w) => {
                        if let Some(d) = diff(&path, v, w) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{path}: {{a}} {v}, {{b}} has none")),
                }
            }
            let extra =
                q.keys().find(|k| !(p.contains_key(*k) || at.is_empty() && PLATFORM_FIELDS.contains(&k.as_str())));
            extra.map(|k| {
                format!(
                    "{}: {{a}} has none, {{b}} {}",
                    if at.is_empty() { k.clone() } else { format!("{at}.{k}") },
                    q[k]
                )
            })
        }
        (Json::Array(p), Json::Array(q)) => {
            for (i, (v, w)) in p.iter().zip(q).enumerate() {
                // Name an array element by its `name` when it has one (procs, links, workloads).
                let key = v["name"].as_str().map_or_else(|| i.to_string(), String::from);
                if let Some(d) = diff(&format!("{at}[{key}]"), v, w) {
                    return Some(d);
                }
            }
            (p.len() != q.len()).then(|| format!("{at}: {{a}} {} entries, {{b}} {}", p.len(), q.len()))
        }
        _ => (x != y).then(|| format!("{at}: {{a}} {x}, {{b}} {y}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn results(points: &[Json]) -> Results {
        points.iter().map(|p| (p["id"].as_u64().unwrap() as u32, p.clone())).collect()
    }

    #[test]
    fn equal_runs_agree_whatever_their_measured_time() {
        let a = results(&[json!({"id": 0, "label": "x", "dev_faults": 3, "mechanism_ns": 10, "mechanism": "host"})]);
        let b = results(&[json!({"id": 0, "label": "x", "dev_faults": 3, "mechanism_ns": 99, "mechanism": "real"})]);
        assert_eq!(first_difference("host", &a, "guest", &b), None);
    }

    #[test]
    fn the_first_differing_counter_is_named_with_both_values() {
        let a = results(&[
            json!({"id": 0, "label": "x", "dev_faults": 3}),
            json!({"id": 1, "label": "y", "batches": 2, "procs": [{"name": "dev0", "busy_ns": 5.0}]}),
        ]);
        let mut b = a.clone();
        b.get_mut(&1).unwrap()["procs"][0]["busy_ns"] = json!(6.0);
        assert_eq!(
            first_difference("host", &a, "guest", &b).as_deref(),
            Some("point 1 (y): procs[dev0].busy_ns: host 5.0, guest 6.0")
        );
        b.get_mut(&0).unwrap()["dev_faults"] = json!(4);
        assert_eq!(
            first_difference("host", &a, "guest", &b).as_deref(),
            Some("point 0 (x): dev_faults: host 3, guest 4")
        );
    }

    #[test]
    fn missing_points_and_fields_are_differences() {
        let a = results(&[json!({"id": 0, "label": "x", "error": "boom"})]);
        let b = results(&[json!({"id": 0, "label": "x"})]);
        assert_eq!(
            first_difference("host", &a, "guest", &b).as_deref(),
            Some("point 0 (x): error: host \"boom\", guest has none")
        );
        let c = results(&[json!({"id": 0, "label": "x", "error": "boom"}), json!({"id": 1, "label": "z"})]);
        assert_eq!(first_difference("host", &a, "guest", &c).as_deref(), Some("point 1: in the guest run only"));
    }
}
