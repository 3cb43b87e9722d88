use super::*;
use crate::experiment::load_str;
use crate::experiment::tests::root;
use serde_json::json;
use std::path::Path;

/// An experiment of one workload, `n` policies, these ratios and repetitions.
fn exp(n: usize, ratios: &[f64], repeat: u32) -> Loaded {
    let mut t = format!("name = \"plots\"\ndevice_memory = [\"1M\"]\nmechanism = \"host\"\nrepeat = {repeat}\n");
    t += "[[workload]]\nkind = \"stream\"\n";
    for i in 0..n {
        t += &format!("[[policy]]\nname = \"pol-{i}\"\nplacement = \"on-touch\"\n");
    }
    let r: Vec<String> = ratios.iter().map(|o| format!("{o:?}")).collect();
    t += &format!("[sweep]\noversubscription = [{}]\n", r.join(", "));
    load_str(Path::new("plots.toml"), &t, &root()).unwrap()
}

/// A result whose every plotted value is `v` (times in ms).
fn result(v: f64) -> Json {
    json!({"mechanism": "host", "sim_ns": v * 1e6, "mechanism_ns": v * 2e6, "dev_faults": v,
           "to_dev": v, "to_cpu": v, "evicted": v})
}

/// Results from `f(point index, policy index, ratio, repetition)`.
fn fill(l: &Loaded, f: impl Fn(usize, usize, f64, u32) -> Json) -> Results {
    let pols: Vec<&String> = l.exp.policies.iter().map(|p| p.name.get_ref()).collect();
    l.points
        .iter()
        .zip(&l.keys)
        .zip(&l.reps)
        .enumerate()
        .map(|(i, ((p, k), r))| (p.id, f(i, pols.iter().position(|n| **n == k.1).unwrap(), k.2, *r)))
        .collect()
}

fn svg<'a>(plots: &'a [(String, String)], name: &str) -> &'a str {
    &plots
        .iter()
        .find(|p| p.0 == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", plots.iter().map(|p| &p.0).collect::<Vec<_>>()))
        .1
}

/// The text of every `<text>` element.
fn texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}\n{svg}"));
    doc.descendants().filter(|n| n.has_tag_name("text")).map(|n| n.text().unwrap_or("").trim().to_string()).collect()
}

#[test]
fn every_policy_has_one_legend_entry_in_both_files_and_the_svg_parses() {
    let l = exp(16, &[1.0, 1.25, 1.5], 1);
    let r = fill(&l, |_, p, o, _| result((p + 1) as f64 * o * 3.0));
    let plots = plots(&l, &r).unwrap();
    let names: Vec<&str> = plots.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["plot-stream.svg", "plot-stream-mech.svg"]);
    for (name, s) in &plots {
        assert!(s.starts_with("<svg"), "{name}");
        let t = texts(s);
        for i in 0..16 {
            assert_eq!(t.iter().filter(|x| **x == format!("pol-{i}")).count(), 1, "{name}: pol-{i} in {t:?}");
        }
    }
    assert!(texts(svg(&plots, "plot-stream.svg")).iter().any(|t| t == "simulated time (ms), log"));
    // The counts beside simulated time: a panel each.
    for panel in ["device faults", "pages moved (to device + to CPU)", "pages evicted"] {
        assert!(texts(svg(&plots, "plot-stream.svg")).iter().any(|t| t.starts_with(panel)), "no {panel} panel");
    }
    assert!(texts(svg(&plots, "plot-stream-mech.svg")).iter().any(|t| t.starts_with("host time of the mechanism")));
    // Drawn again from the same results, the same bytes (a resumed or merged run compares them).
    assert_eq!(plots, super::plots(&l, &r).unwrap());
}

#[test]
fn sixteen_policies_get_sixteen_looks_and_the_ninth_is_not_the_firsts() {
    let looks: std::collections::HashSet<_> = (0..16).map(style).collect();
    assert_eq!(looks.len(), 16);
    let colours: std::collections::HashSet<_> = (0..16).map(|i| style(i).0).collect();
    assert_eq!(colours.len(), 16, "16 policies, 16 colours");
    assert_ne!(style(8).0, style(0).0, "the ninth policy shared on-demand's blue with the old 8 colours");
    // In the file too: every legend marker of the first 16 policies has its own fill or stroke.
    let l = exp(16, &[1.0, 1.5], 1);
    let s = plots(&l, &fill(&l, |_, p, _, _| result(p as f64 + 1.0))).unwrap()[0].1.clone();
    for i in 0..16 {
        let RGBColor(r, g, b) = style(i).0;
        assert!(s.contains(&format!("#{r:02X}{g:02X}{b:02X}")), "policy {i}'s colour is not drawn");
    }
}

#[test]
fn a_single_ratio_plot_names_the_ratio_and_its_bars_start_at_the_axis() {
    let l = exp(3, &[1.1], 1);
    let plots = plots(&l, &fill(&l, |_, p, _, _| result([40.0, 3.0, 7.0][p]))).unwrap();
    let t = texts(svg(&plots, "plot-stream.svg"));
    assert!(t.iter().any(|x| x == "plots — stream at oversubscription 1.1"), "{t:?}");
    assert!(t.iter().any(|x| x == "policy (as in the legend)"), "{t:?}");
    // 3 to 40: a log axis from 2, not from 1; the bars (filled at 35 %) go down to it.
    let y = Axis::new(&[3.0, 7.0, 40.0]);
    assert!(y.log && y.lo == 2.0 && y.hi == 50.0, "{y:?}");
    let s = svg(&plots, "plot-stream.svg");
    assert_eq!(s.matches("opacity=\"0.35\"").count(), 3 * 4, "one bar per policy in each of 4 panels");
}

#[test]
fn repetitions_are_means_with_an_error_bar_per_point() {
    let blue = "stroke=\"#1F77B4\"";
    let polylines = |s: &str| s.lines().filter(|l| l.contains("<polyline") && l.contains(blue)).count();
    let once = exp(1, &[1.0, 1.25, 1.5], 1);
    let one = plots(&once, &fill(&once, |_, _, o, _| result(o * 10.0))).unwrap();
    // One line per panel (the legend's sample is a polyline too).
    assert_eq!(polylines(svg(&one, "plot-stream-mech.svg")), 2);
    assert!(!texts(svg(&one, "plot-stream.svg")).iter().any(|t| t.contains("min–max")));
    let thrice = exp(1, &[1.0, 1.25, 1.5], 3);
    let three = plots(&thrice, &fill(&thrice, |_, _, o, rep| result(o * 10.0 + f64::from(rep)))).unwrap();
    // Plus an error bar at each of the three points.
    assert_eq!(polylines(svg(&three, "plot-stream-mech.svg")), 2 + 3);
    assert_eq!(polylines(svg(&three, "plot-stream.svg")), 1 + 4 * (1 + 3));
    let t = texts(svg(&three, "plot-stream.svg"));
    assert!(
        t.iter().any(|x| x == "points: mean of 3 repetitions") && t.iter().any(|x| x == "error bars: min–max"),
        "{t:?}"
    );
    // The mean, smallest and largest of each point's repetitions.
    let reps = [json!({"sim_ns": 1e6}), json!({"sim_ns": 2e6}), json!({"sim_ns": 6e6})];
    let data = Data { policies: vec!["pol-0"], ratios: vec![1.0], results: vec![vec![reps.iter().collect()]] };
    assert_eq!(data.series(Metric::Sim)[0], [(1.0, Stat { mean: 3.0, min: 1.0, max: 6.0, n: 3 })]);
}

#[test]
fn log_axes_have_ticks_between_decades() {
    // One and a half decades: 1-2-5 ticks.
    let y = Axis::new(&[3.0, 95.0]);
    assert!(y.log);
    assert_eq!(y.ticks, [2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
    assert!(y.minor.contains(&3.0) && y.minor.contains(&30.0) && !y.minor.contains(&20.0), "{:?}", y.minor);
    let l = exp(2, &[1.0, 1.5], 1);
    let s = plots(&l, &fill(&l, |_, p, o, _| result(if p == 0 { 3.0 } else { 95.0 } * o))).unwrap();
    let t = texts(&s[0].1);
    for label in ["2", "5", "20", "50", "100"] {
        assert!(t.iter().any(|x| x == label), "no tick {label} in {t:?}");
    }
    // Small values, and values under a decade apart: linear from 0, 1-2-5 steps.
    let y = Axis::new(&[0.0021, 0.03]);
    assert_eq!(y.ticks.iter().map(|t| number(*t)).collect::<Vec<_>>(), ["0.002", "0.005", "0.01", "0.02", "0.05"]);
    let y = Axis::new(&[120.0, 480.0]);
    assert!(!y.log && y.lo == 0.0 && y.hi == 500.0 && y.ticks.len() == 6, "{y:?}");
    // Past four decades, decades only.
    let y = Axis::new(&[3.0, 2e6]);
    assert_eq!(y.ticks, [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7]);
    assert_eq!(number(2e4), "20k");
    assert_eq!(number(2.5e6), "2.5M");
    assert_eq!(number(1500.0), "1500");
    assert_eq!(number(0.125), "0.125");
}

#[test]
fn empty_zero_and_non_finite_values_do_not_panic() {
    for v in [vec![], vec![f64::NAN], vec![f64::INFINITY, 1.0], vec![0.0, 0.0], vec![-3.0, 5.0], vec![7.0, 7.0]] {
        let y = Axis::new(&v);
        assert!(y.lo < y.hi && !y.ticks.is_empty() && y.ticks.iter().all(|t| t.is_finite()), "{v:?}: {y:?}");
        assert!(y.map(f64::NAN).is_nan() || y.map(f64::NAN).is_finite());
    }
    assert_eq!(stat(&[f64::NAN]), None);
    let l = exp(3, &[1.0, 1.5], 1);
    // Every point failed: nothing to plot, no file.
    assert!(plots(&l, &fill(&l, |_, _, _, _| json!({"error": "boom"}))).unwrap().is_empty());
    assert!(plots(&l, &Results::new()).unwrap().is_empty());
    // Zeros, missing counters, one policy without results: drawn, linear where zeros are.
    let r = fill(&l, |_, p, _, _| match p {
        0 => result(0.0),
        1 => json!({"sim_ns": 5e6}),
        _ => json!({"error": "boom"}),
    });
    let plots = plots(&l, &r).unwrap();
    assert_eq!(plots.len(), 2);
    let t = texts(svg(&plots, "plot-stream.svg"));
    assert!(t.iter().any(|x| x == "simulated time (ms)"), "{t:?}");
    assert!(t.iter().any(|x| x == "pol-2"), "a policy without results keeps its legend entry");
    // A single ratio with one value: a bar, no division by a zero range.
    let one = exp(1, &[1.0], 1);
    assert_eq!(super::plots(&one, &fill(&one, |_, _, _, _| result(0.0))).unwrap().len(), 2);
}
