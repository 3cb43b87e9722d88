//! Comparison tables (`[[table]]`): rows are workloads, columns policies at an
//! oversubscription; ours beside the published numbers, and whether ours reproduce them.
//!
//! Owns the table format ([`TableSpec`], checked by [`check`] when the file loads), the
//! printed tables (in summary.txt as fixed-width text, [`comparisons`]; on the terminal drawn by
//! comfy-table, [`comparisons_terminal`]) and their verdicts ([`verdicts`], [`reproduction`]).
//!
//! **Cells.** A cell with a published value is *within 2x* when ours, set on the published
//! value's scale, is between half and twice it (both bounds included):
//! - a `normalise` table's cells are ratios already (ours ÷ ours of the `normalise` column of
//!   the same row, and the published slowdowns): they compare directly;
//! - any other table's cells are absolute, and simulated ms are not the artifact's µs (another
//!   footprint, another clock), so it names a `reference` column: the cell compares
//!   ours ÷ ours[reference] with published ÷ published[reference] of the same row. The
//!   reference cell itself is 1 by construction and is not counted.
//!
//! A cell is *not counted* when nothing is published for it (a negative value, a missing row),
//! or, in a `reference` table, when the row's reference is not published. A counted cell whose
//! point of ours is missing (no result, or an error) is a failed cell: a reproduction that did
//! not run has not reproduced anything.
//!
//! **Orderings.** In each row, every pair of columns with published values that differ by more
//! than the table's `tie` (the larger over the smaller minus 1; default 0.05, so 5 %) is a
//! published ordering. It holds when ours order the pair the same way, strictly: ours equal is
//! not the published order. Pairs within `tie` are not counted, whatever ours do. The
//! reference column takes part (its order against the others is a published result too); a
//! missing point of ours fails every ordering it is in.
//!
//! **Shapes.** Some results are published only as a shape: "A is faster than B" (a paper's
//! mean speedups over its own workloads, not a value per workload of ours). A table gives them
//! as `shape = [["A", "B"], ...]` with the `source` that publishes them, and no `published`
//! values: each pair is a published ordering in every row, held as above; such a table has
//! no cells to count.
//!
//! Invariants: the counts printed under each table, in the summary file and in the final
//! `reproduction:` line all come from one [`verdicts`] call over the same results; a table
//! without published values has no verdicts and adds nothing to the counts.

use super::{Loaded, Results, Src, sim_ms, truncate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use toml::Spanned;

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
    /// The column absolute cells are divided by, ours by ours and published by published, for
    /// their verdicts (needed when there are published values and no `normalise`).
    #[serde(default)]
    pub reference: Option<Spanned<String>>,
    /// Published values of a row closer than this (the larger over the smaller minus 1) are a
    /// tie, not an ordering (default 0.05).
    #[serde(default)]
    pub tie: Option<Spanned<f64>>,
    /// A published shape instead of published values: pairs `[lower, higher]` of columns, each
    /// a published ordering ("lower is faster than higher") in every row (see the module docs).
    #[serde(default)]
    pub shape: Vec<[String; 2]>,
    /// Where the shape is published (printed with the verdict); required with `shape`.
    #[serde(default)]
    pub source: Option<String>,
}

/// The default tie tolerance of published orderings: 5 %.
pub const TIE: f64 = 0.05;

/// Ours within this factor of the published value, either way, is a reproduced cell.
pub const WITHIN: f64 = 2.0;

impl TableSpec {
    /// Whether the table has anything published to check: values or a shape.
    fn checked(&self) -> bool {
        !self.published.is_empty() || !self.shape.is_empty()
    }
    fn tie(&self) -> f64 {
        self.tie.as_ref().map_or(TIE, |t| *t.get_ref())
    }
    fn reference(&self) -> Option<&str> {
        self.reference.as_ref().map(|r| r.get_ref().as_str())
    }
}

fn one() -> f64 {
    1.0
}

/// The point for (workload, policy label, oversubscription), first repetition.
pub(super) fn find(l: &Loaded, w: &str, pol: &str, o: f64) -> Option<u32> {
    l.points.iter().zip(&l.keys).find(|(_, k)| k.0 == w && k.1 == pol && (k.2 - o).abs() < 1e-9).map(|(p, _)| p.id)
}

/// A column's policy and oversubscription (its `@ratio` is a number: [`check`] says so on load).
fn column(t: &TableSpec, c: &str) -> (String, f64) {
    match c.rsplit_once('@') {
        Some((p, o)) => (p.to_string(), o.parse().unwrap_or(t.oversubscription)),
        None => (c.to_string(), t.oversubscription),
    }
}

/// The span of the `i`-th `[[table]]` header in the file, where a table's errors point
/// (its fields other than `reference` and `tie` carry no span of their own).
fn header(src: &Src<'_>, i: usize) -> std::ops::Range<usize> {
    let mut at = 0;
    let mut n = 0;
    for line in src.text.split_inclusive('\n') {
        if line.trim_start().starts_with("[[table]]") {
            if n == i {
                let start = at + line.find('[').unwrap_or(0);
                return start..start + 9;
            }
            n += 1;
        }
        at += line.len();
    }
    0..0
}

/// `[[table]]`: each column (and `normalise`, `reference`, each ratio's two) names a policy
/// at an oversubscription some point has; each published row names a workload and has one
/// value per column; a table with published values names `normalise` or `reference` (its
/// cells are ratios, or compared as ratios to the reference), not both; `tie` is 0 to 1.
pub(super) fn check(src: &Src<'_>, tables: &[TableSpec], keys: &[(String, String, f64)]) -> Result<(), String> {
    for (i, t) in tables.iter().enumerate() {
        let sec = format!("table[{i}]");
        let at = |field: &str, msg: String| src.at(header(src, i), &format!("{sec}.{field}"), msg);
        let exists = |field: &str, c: &str| -> Result<(), String> {
            let (p, o) = match c.rsplit_once('@') {
                Some((p, o)) => {
                    (p, o.parse::<f64>().map_err(|_| at(field, format!("`{c}`: `{o}` after '@' is not a ratio")))?)
                }
                None => (c, t.oversubscription),
            };
            if keys.iter().any(|k| k.1 == p && (k.2 - o).abs() < 1e-9) {
                return Ok(());
            }
            let mut pols: Vec<&str> = Vec::new();
            for k in keys {
                if !pols.contains(&k.1.as_str()) {
                    pols.push(&k.1);
                }
            }
            let mut overs: Vec<f64> = keys.iter().filter(|k| k.1 == p).map(|k| k.2).collect();
            overs.sort_by(f64::total_cmp);
            overs.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
            Err(at(
                field,
                if overs.is_empty() {
                    format!("`{c}`: no policy `{p}`; policies: {}", pols.join(", "))
                } else {
                    format!(
                        "`{c}`: no point of `{p}` at oversubscription {o}; it runs at {}",
                        overs.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
                    )
                },
            ))
        };
        for c in &t.columns {
            exists("columns", c)?;
        }
        if let Some(n) = &t.normalise {
            exists("normalise", n)?;
        }
        for r in &t.ratios {
            exists("ratios", &r[0])?;
            exists("ratios", &r[1])?;
        }
        for (w, v) in &t.published {
            if !keys.iter().any(|k| k.0 == *w) {
                let mut wls: Vec<&str> = Vec::new();
                for k in keys {
                    if !wls.contains(&k.0.as_str()) {
                        wls.push(&k.0);
                    }
                }
                return Err(at("published", format!("row `{w}` names no workload; workloads: {}", wls.join(", "))));
            }
            if v.len() != t.columns.len() {
                return Err(at(
                    "published",
                    format!(
                        "row `{w}` has {} values for {} columns (give -1 where nothing is published)",
                        v.len(),
                        t.columns.len()
                    ),
                ));
            }
        }
        if !t.shape.is_empty() {
            if !t.published.is_empty() {
                return Err(at(
                    "shape",
                    "a shape is published orderings without values: give `published` values or a `shape`, not both"
                        .into(),
                ));
            }
            if t.source.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(at(
                    "source",
                    "a `shape` needs its `source`: the paper or figure it is published in".into(),
                ));
            }
            for [lo, hi] in &t.shape {
                for c in [lo, hi] {
                    if !t.columns.contains(c) {
                        return Err(at("shape", format!("`{c}` is not a column; columns: {}", t.columns.join(", "))));
                    }
                }
                if lo == hi {
                    return Err(at("shape", format!("`[{lo}, {hi}]` orders a column against itself")));
                }
            }
        } else if t.source.is_some() {
            return Err(at("source", "`source` names where a `shape` is published; this table has none".into()));
        }
        if let Some(r) = &t.reference {
            let f = format!("{sec}.reference");
            if t.normalise.is_some() {
                return Err(src.at(
                    r.span(),
                    &f,
                    "a `normalise` table's cells are ratios already; give one of the two",
                ));
            }
            if !t.columns.contains(r.get_ref()) {
                return Err(src.at(
                    r.span(),
                    &f,
                    format!("`{}` is not a column; columns: {}", r.get_ref(), t.columns.join(", ")),
                ));
            }
        } else if t.normalise.is_none() && !t.published.is_empty() {
            return Err(at(
                "reference",
                "the cells are absolute (simulated ms against published values in another unit): name the column they are compared relative to, `reference = \"COLUMN\"`, or `normalise`".into(),
            ));
        }
        if let Some(x) = &t.tie
            && !(0.0..=1.0).contains(x.get_ref())
        {
            return Err(src.at(
                x.span(),
                &format!("{sec}.tie"),
                format!("{}: expected 0 to 1 (0.05 is 5 %)", x.get_ref()),
            ));
        }
    }
    Ok(())
}

/// One row of a table: ours (normalised for a `normalise` table, else ms) and the published
/// values, by column.
struct Row<'a> {
    l: &'a Loaded,
    results: &'a Results,
    t: &'a TableSpec,
    w: &'a str,
}

impl Row<'_> {
    fn ours(&self, c: &str) -> Option<f64> {
        let (p, o) = column(self.t, c);
        let v = find(self.l, self.w, &p, o).and_then(|id| sim_ms(self.results, id))?;
        match &self.t.normalise {
            Some(n) => {
                let (np, no) = column(self.t, n);
                let base = find(self.l, self.w, &np, no).and_then(|id| sim_ms(self.results, id))?;
                Some(v / base)
            }
            None => Some(v),
        }
    }

    fn published(&self, c: &str) -> Option<f64> {
        let i = self.t.columns.iter().position(|x| x == c)?;
        // Negative marks a value the artifact does not have.
        self.t.published.get(self.w).and_then(|v| v.get(i).copied().flatten()).filter(|x| *x >= 0.0)
    }

    /// The verdict of column `c` (see the module docs).
    fn cell(&self, c: &str) -> Cell {
        let Some(p) = self.published(c) else { return Cell::NotCounted };
        let (p, o) = match self.t.reference() {
            Some(r) if r == c => return Cell::Reference,
            Some(r) => {
                let Some(pr) = self.published(r).filter(|x| *x > 0.0) else { return Cell::NotCounted };
                (p / pr, self.ours(c).zip(self.ours(r)).map(|(a, b)| a / b))
            }
            None => (p, self.ours(c)),
        };
        if p <= 0.0 || !p.is_finite() {
            return Cell::NotCounted;
        }
        match o {
            Some(o) if o.is_finite() => Cell::Ratio(o / p),
            Some(_) | None => Cell::Missing,
        }
    }

    /// The published orderings of this row: a shape's pairs in their order, else every pair of
    /// published values apart by more than the tie, in column order.
    fn orderings(&self) -> Vec<Ordering> {
        let mut out = Vec::new();
        for [lower, higher] in &self.t.shape {
            out.push(Ordering {
                row: self.w.to_string(),
                lower: lower.clone(),
                higher: higher.clone(),
                published: None,
                ours: self.ours(lower).zip(self.ours(higher)),
                normalised: self.t.normalise.is_some(),
            });
        }
        let cols = &self.t.columns;
        for (i, a) in cols.iter().enumerate() {
            for b in &cols[i + 1..] {
                let (Some(pa), Some(pb)) = (self.published(a), self.published(b)) else { continue };
                let (lo, hi) = if pa <= pb { (pa, pb) } else { (pb, pa) };
                if lo <= 0.0 || hi / lo - 1.0 <= self.t.tie() {
                    continue;
                }
                let ((lower, pl), (higher, ph)) = if pa < pb { ((a, pa), (b, pb)) } else { ((b, pb), (a, pa)) };
                out.push(Ordering {
                    row: self.w.to_string(),
                    lower: lower.clone(),
                    higher: higher.clone(),
                    published: Some((pl, ph)),
                    ours: self.ours(lower).zip(self.ours(higher)),
                    normalised: self.t.normalise.is_some(),
                });
            }
        }
        out
    }
}

/// The verdict of one published cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    /// Nothing published to compare with (or, in a `reference` table, nothing published for
    /// the row's reference): not counted.
    NotCounted,
    /// The reference column: 1 by construction, not counted.
    Reference,
    /// Ours on the published scale divided by the published value.
    Ratio(f64),
    /// Published, but ours has no result: a failed cell.
    Missing,
}

impl Cell {
    /// Whether the cell counts towards "C of T".
    pub fn counted(self) -> bool {
        matches!(self, Cell::Ratio(_) | Cell::Missing)
    }

    /// Whether ours is within 2x of the published value, either way.
    pub fn within(self) -> bool {
        matches!(self, Cell::Ratio(q) if (1.0 / WITHIN..=WITHIN).contains(&q))
    }

    /// The mark printed in the cell: `ok`, ours over published (`2.70x`, `0.31x`), `ref`,
    /// `miss`, or nothing.
    fn mark(self) -> String {
        match self {
            Cell::NotCounted => String::new(),
            Cell::Reference => "ref".into(),
            Cell::Missing => "miss".into(),
            c @ Cell::Ratio(q) => {
                if c.within() {
                    "ok".into()
                } else {
                    format!("{q:.2}x")
                }
            }
        }
    }
}

/// A published ordering in one row: `lower`'s published value is below `higher`'s by more
/// than the tie tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct Ordering {
    /// The row (workload).
    pub row: String,
    /// The column published lower.
    pub lower: String,
    /// The column published higher.
    pub higher: String,
    /// Published (lower, higher); none for a shape's ordering, published without values.
    pub published: Option<(f64, f64)>,
    /// Ours (lower, higher), if both points have results.
    pub ours: Option<(f64, f64)>,
    /// Whether ours are ratios (a `normalise` table) rather than ms.
    normalised: bool,
}

impl Ordering {
    /// Whether ours order the pair as published, strictly.
    pub fn held(&self) -> bool {
        self.ours.is_some_and(|(a, b)| a < b)
    }
}

impl std::fmt::Display for Ordering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let num = |x: f64| if self.normalised { format!("{x:.2}") } else { figure(x) };
        match self.published {
            Some((lo, hi)) => {
                write!(f, "{}: {} < {} published ({} vs {}), ", self.row, self.lower, self.higher, num(lo), num(hi))?
            }
            None => write!(f, "{}: {} < {} published (shape), ", self.row, self.lower, self.higher)?,
        }
        let unit = if self.normalised { "" } else { " ms" };
        // Two different values of ours that round alike are shown to four decimals.
        let ours = |a: f64, b: f64| match (num(a), num(b)) {
            (x, y) if x == y && a != b => format!("{a:.4} vs {b:.4}{unit}"),
            (x, y) => format!("{x} vs {y}{unit}"),
        };
        match self.ours {
            None => write!(f, "ours missing"),
            Some((a, b)) if a == b => write!(f, "ours tied ({})", ours(a, b)),
            Some((a, b)) if a > b => write!(f, "ours reversed ({})", ours(a, b)),
            Some((a, b)) => write!(f, "ours held ({})", ours(a, b)),
        }
    }
}

/// A figure with at least three significant digits: 254615, 11.3, 9.97, 0.123.
fn figure(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        a if a >= 1.0 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    }
}

/// The verdicts of one table with published values.
#[derive(Debug, Clone, PartialEq)]
pub struct TableVerdict {
    /// The table's title.
    pub title: String,
    /// (row, column, verdict) of every cell, rows in the experiment's workload order.
    pub cells: Vec<(String, String, Cell)>,
    /// Every published ordering.
    pub orderings: Vec<Ordering>,
}

impl TableVerdict {
    /// Counted cells, and those within 2x.
    pub fn cell_counts(&self) -> (usize, usize) {
        let counted = self.cells.iter().filter(|c| c.2.counted()).count();
        (self.cells.iter().filter(|c| c.2.within()).count(), counted)
    }

    /// Published orderings, and those ours hold.
    pub fn ordering_counts(&self) -> (usize, usize) {
        (self.orderings.iter().filter(|o| o.held()).count(), self.orderings.len())
    }

    /// `C of T cells within 2x; O of P orderings as published`.
    pub fn counts(&self) -> String {
        let ((c, t), (o, p)) = (self.cell_counts(), self.ordering_counts());
        format!("{c} of {t} cells within 2x; {o} of {p} orderings as published")
    }
}

/// The workloads of the experiment, in file order: the rows of every table.
fn workloads(l: &Loaded) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for k in &l.keys {
        if !v.contains(&k.0) {
            v.push(k.0.clone());
        }
    }
    v
}

fn verdict(l: &Loaded, results: &Results, t: &TableSpec) -> TableVerdict {
    let mut cells = Vec::new();
    let mut orderings = Vec::new();
    // A shape holds in every row; published values, in the rows they are given for.
    for w in workloads(l).iter().filter(|w| !t.shape.is_empty() || t.published.contains_key(*w)) {
        let row = Row { l, results, t, w };
        for c in &t.columns {
            cells.push((w.clone(), c.clone(), row.cell(c)));
        }
        orderings.extend(row.orderings());
    }
    TableVerdict { title: t.title.clone(), cells, orderings }
}

/// The verdicts of every table with published values, in file order.
pub fn verdicts(l: &Loaded, results: &Results) -> Vec<TableVerdict> {
    l.exp.tables.iter().filter(|t| t.checked()).map(|t| verdict(l, results, t)).collect()
}

/// Per table its counts, then the line that ends the run:
/// `reproduction: C of T published cells within 2x; O of P orderings as published`.
/// `None` when no table has published values.
pub fn reproduction(v: &[TableVerdict]) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    let mut s = String::from("reproduction, per table:\n");
    let (mut c, mut t, mut o, mut p) = (0, 0, 0, 0);
    for tv in v {
        let _ = writeln!(s, "  {}: {}", tv.title, tv.counts());
        let ((c1, t1), (o1, p1)) = (tv.cell_counts(), tv.ordering_counts());
        (c, t, o, p) = (c + c1, t + t1, o + o1, p + p1);
    }
    let _ = writeln!(s, "reproduction: {c} of {t} published cells within 2x; {o} of {p} orderings as published");
    Some(s)
}

/// One comparison table, cut into the parts both renderings share: the text of
/// [`comparisons`] (summary.txt) and the terminal's ([`comparisons_terminal`]).
struct Drawn {
    title: String,
    /// What a cell holds (printed under the title).
    legend: String,
    /// The policy columns' headers.
    columns: Vec<String>,
    /// The ratio columns' headers (`a ÷ b`).
    ratios: Vec<String>,
    /// Per workload, its cells: one per policy column, then one per ratio column.
    rows: Vec<(String, Vec<String>)>,
    /// The verdict and the published orderings ours do not hold.
    notes: Vec<String>,
    /// A policy column's width in the text.
    width: usize,
}

/// The comparison tables of `l` with `results`, in file order.
fn drawn(l: &Loaded, results: &Results) -> Vec<Drawn> {
    let workloads = workloads(l);
    let mut out = Vec::new();
    for t in &l.exp.tables {
        let unit = if t.normalise.is_some() { "×".to_string() } else { "ms".to_string() };
        let legend = if let Some(src) = t.source.as_deref().filter(|_| !t.shape.is_empty()) {
            let pairs: Vec<String> = t.shape.iter().map(|[a, b]| format!("{a} < {b}")).collect();
            format!("(each cell: ours in {unit}; published shape, every row: {}; source: {src})", pairs.join(", "))
        } else if t.published.is_empty() {
            format!("(each cell: ours in {unit} | -, nothing published to compare)")
        } else {
            let scale = match t.reference() {
                Some(r) => format!("ours ÷ ours[{r}] against published ÷ published[{r}]"),
                None => "ours against published".into(),
            };
            format!(
                "(each cell: ours in {unit} | published in {}, then ok when {scale} is within 2x, else that ratio{})",
                t.unit,
                if t.ratios.is_empty() { "" } else { "; ratios: ours | published" }
            )
        };
        let mut rows = Vec::new();
        for w in &workloads {
            let row = Row { l, results, t, w };
            let mut cells = Vec::new();
            for c in &t.columns {
                let o = row
                    .ours(c)
                    .map_or("-".into(), |x| if t.normalise.is_some() { format!("{x:.2}") } else { format!("{x:.1}") });
                let p = row
                    .published(c)
                    .map_or("-".into(), |x| if t.normalise.is_some() { format!("{x:.2}") } else { format!("{x:.0}") });
                let mark = if t.published.contains_key(w) { row.cell(c).mark() } else { String::new() };
                cells.push(match () {
                    // A shape has no values: the cell is ours.
                    _ if !t.shape.is_empty() => o,
                    _ if mark.is_empty() => format!("{o} | {p}"),
                    _ => format!("{o} | {p} {mark}"),
                });
            }
            for r in &t.ratios {
                let o = row.ours(&r[0]).zip(row.ours(&r[1])).map(|(a, b)| a / b);
                let p = row.published(&r[0]).zip(row.published(&r[1])).map(|(a, b)| a / b);
                let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
                cells.push(format!("{} | {}", f(o), f(p)));
            }
            rows.push((w.clone(), cells));
        }
        let mut notes = Vec::new();
        if t.checked() {
            let v = verdict(l, results, t);
            notes.push(format!("verdict: {}", v.counts()));
            notes.extend(v.orderings.iter().filter(|o| !o.held()).map(|o| format!("not as published: {o}")));
        }
        out.push(Drawn {
            title: t.title.clone(),
            legend,
            columns: t.columns.clone(),
            ratios: t.ratios.iter().map(|r| format!("{} ÷ {}", r[0], r[1])).collect(),
            rows,
            notes,
            width: if t.checked() { 28 } else { 22 },
        });
    }
    out
}

/// The comparison tables as summary.txt holds them: ours, and the published numbers beside
/// them with each cell's verdict, in fixed-width columns (names cut to fit); under each table
/// its counts and the published orderings ours do not hold.
pub fn comparisons(l: &Loaded, results: &Results) -> String {
    let mut s = String::new();
    for d in drawn(l, results) {
        let width = d.width;
        let _ = writeln!(s, "\n{}", d.title);
        let _ = writeln!(s, "  {}", d.legend);
        let _ = write!(s, "  {:<12}", "");
        for c in &d.columns {
            let _ = write!(s, " {:>width$}", truncate(c, width));
        }
        for r in &d.ratios {
            let _ = write!(s, " {:>24}", truncate(r, 24));
        }
        s.push('\n');
        for (w, cells) in &d.rows {
            let _ = write!(s, "  {:<12}", truncate(w, 12));
            for (i, cell) in cells.iter().enumerate() {
                if i < d.columns.len() {
                    let _ = write!(s, " {cell:>width$}");
                } else {
                    let _ = write!(s, " {cell:>24}");
                }
            }
            s.push('\n');
        }
        for n in &d.notes {
            let _ = writeln!(s, "  {n}");
        }
    }
    s
}

/// The comparison tables as the terminal gets them: the same titles, cells and notes as
/// [`comparisons`], each table drawn by comfy-table with whole names and columns as wide as
/// their cells.
pub fn comparisons_terminal(l: &Loaded, results: &Results) -> String {
    let mut s = String::new();
    for d in drawn(l, results) {
        let _ = writeln!(s, "\n{}", d.title);
        let _ = writeln!(s, "  {}", d.legend);
        let mut table = comfy_table::Table::new();
        table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
        table.set_header(std::iter::once("workload".to_string()).chain(d.columns).chain(d.ratios));
        for (w, cells) in d.rows {
            table.add_row(std::iter::once(w).chain(cells));
        }
        for c in table.column_iter_mut().skip(1) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
        for line in table.lines() {
            let _ = writeln!(s, "  {line}");
        }
        for n in &d.notes {
            let _ = writeln!(s, "  {n}");
        }
    }
    s
}
