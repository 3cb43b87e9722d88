//! Tests of [`super::brief`] and [`super::tail`]: the guest's tagged lines, kilobytes of JSON,
//! are shown to a person (and in error messages, which reach the CSV) as short decoded messages.

use super::tests::point;
use super::*;
use boot::protocol::json::Json;
use hmm::place::spec;

#[test]
fn tagged_lines_are_shown_decoded_and_short() {
    let (p, o) = point();
    let result = Tag::Point.line(spec::result_json(&p, &o, "host")).to_string();
    assert!(result.len() > 500, "a result line is long: {}", result.len());
    let b = brief(&result);
    assert!(b.starts_with(&format!("@@POINT {} ({}): a result (", p.id, p.label)), "{b}");
    assert!(b.len() < 200 && !b.contains('{'), "{b}");
    let mut err = Json::<String>::new();
    err.object(|j| {
        j.num("id", 7);
        j.str("error", &"DMA timed out ".repeat(40));
    });
    let b = brief(&Tag::Point.line(err.finish()).to_string());
    assert!(b.starts_with("@@POINT 7: error: DMA timed out DMA") && b.ends_with('…'), "{b}");
    // A tag after another CPU's log text, and a line cut off mid-JSON.
    let b = brief(&format!("[cpu1] x{}", Tag::Boot.line("{\"ready_ns\": 5}")));
    assert_eq!(b, "[cpu1] x@@BOOT: the boot report (15 bytes of JSON)");
    assert_eq!(brief("@@TRACE {\"point\": 3, \"t\""), "@@TRACE: 16 bytes, not valid JSON (cut off?)");
    assert_eq!(brief("@@TRACE {\"point\": 3}"), "@@TRACE: a trace event of point 3");
    assert_eq!(brief("plain log line"), "plain log line");
    assert_eq!(brief(&"x".repeat(500)).chars().count(), BRIEF);
    let lines: Vec<String> = vec!["a".into(), result.clone(), "b".into()];
    let t = tail(&lines, 2);
    assert!(t.starts_with("@@POINT ") && t.ends_with(" | b") && t.len() < 300, "{t}");
    assert_eq!(tail(&[], 5), "(none)");
}
