//! Comparison tables (`[[table]]`): rows are workloads, columns policies at an
//! oversubscription; ours beside the published numbers.

use super::{Loaded, Results, sim_ms, truncate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A comparison table: rows are workloads, columns policies (at an oversubscription), with the
/// published values beside ours.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Title.
    pub title: String,
    /// Columns: `policy label` or `policy label@ratio`.
    pub columns: Vec<String>,
    /// Oversubscription for columns without `@`.
    #[serde(default = "one")]
    pub oversubscription: f64,
    /// Divide every cell by this column of the same row (slowdowns); else cells are ms.
    #[serde(default)]
    pub normalise: Option<String>,
    /// Ratios of two columns to print (ours and published).
    #[serde(default)]
    pub ratios: Vec<[String; 2]>,
    /// Published values per workload, one per column (negative: not published).
    #[serde(default)]
    pub published: BTreeMap<String, Vec<Option<f64>>>,
    /// Unit of the published values, for the header.
    #[serde(default)]
    pub unit: String,
}

fn one() -> f64 {
    1.0
}

/// The point for (workload, policy label, oversubscription), first repetition.
pub(super) fn find(l: &Loaded, w: &str, pol: &str, o: f64) -> Option<u32> {
    l.points.iter().zip(&l.keys).find(|(_, k)| k.0 == w && k.1 == pol && (k.2 - o).abs() < 1e-9).map(|(p, _)| p.id)
}

fn column(t: &TableSpec, c: &str) -> (String, f64) {
    match c.rsplit_once('@') {
        Some((p, o)) => (p.to_string(), o.parse().unwrap_or(t.oversubscription)),
        None => (c.to_string(), t.oversubscription),
    }
}

/// The comparison tables: ours, and the published numbers beside them.
pub fn comparisons(l: &Loaded, results: &Results) -> String {
    let mut s = String::new();
    let workloads: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for k in &l.keys {
            if !v.contains(&k.0) {
                v.push(k.0.clone());
            }
        }
        v
    };
    for t in &l.exp.tables {
        let _ = writeln!(s, "\n{}", t.title);
        let unit = if t.normalise.is_some() { "×".to_string() } else { "ms".to_string() };
        if t.published.is_empty() {
            let _ = writeln!(s, "  (each cell: ours in {unit} | -, nothing published to compare)");
        } else {
            let _ = writeln!(s, "  (each cell: ours in {unit} | published in {}; ratios: ours | published)", t.unit);
        }
        let _ = write!(s, "  {:<12}", "");
        for c in &t.columns {
            let _ = write!(s, " {:>22}", truncate(c, 22));
        }
        for r in &t.ratios {
            let _ = write!(s, " {:>24}", truncate(&format!("{} ÷ {}", r[0], r[1]), 24));
        }
        s.push('\n');
        for w in &workloads {
            let ours = |c: &str| {
                let (p, o) = column(t, c);
                let v = find(l, w, &p, o).and_then(|id| sim_ms(results, id))?;
                match &t.normalise {
                    Some(n) => {
                        let (np, no) = column(t, n);
                        let base = find(l, w, &np, no).and_then(|id| sim_ms(results, id))?;
                        Some(v / base)
                    }
                    None => Some(v),
                }
            };
            let published = t.published.get(w);
            let pubv = |c: &str| {
                let i = t.columns.iter().position(|x| x == c)?;
                // Negative marks a value the artifact does not have.
                published.and_then(|v| v.get(i).copied().flatten()).filter(|x| *x >= 0.0)
            };
            let _ = write!(s, "  {:<12}", truncate(w, 12));
            for c in &t.columns {
                let o = ours(c)
                    .map_or("-".into(), |x| if t.normalise.is_some() { format!("{x:.2}") } else { format!("{x:.1}") });
                let p = pubv(c)
                    .map_or("-".into(), |x| if t.normalise.is_some() { format!("{x:.2}") } else { format!("{x:.0}") });
                let _ = write!(s, " {:>22}", format!("{o} | {p}"));
            }
            for r in &t.ratios {
                let o = ours(&r[0]).zip(ours(&r[1])).map(|(a, b)| a / b);
                let p = pubv(&r[0]).zip(pubv(&r[1])).map(|(a, b)| a / b);
                let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
                let _ = write!(s, " {:>24}", format!("{} | {}", f(o), f(p)));
            }
            s.push('\n');
        }
    }
    s
}
