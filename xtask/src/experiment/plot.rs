//! The SVG plots of an experiment's results, drawn with `plotters` (its SVG backend only: text
//! is written as SVG `<text>`, so no font library is needed).
//!
//! Owns which plots a run writes and how they look. Per workload (file names from the label,
//! every character but ASCII letters and digits as `_`):
//!
//! - `plot-WORKLOAD.svg`: four panels, simulated time (ms), device faults, pages moved (to the
//!   device plus to the CPU) and pages evicted, against oversubscription (one line per policy),
//!   or, when the sweep has one ratio, one bar per policy with the ratio in the title;
//! - `plot-WORKLOAD-mech.svg`: the measured time of the mechanism (`mechanism_ns`, in the
//!   summary's words: TCG time of the real mechanism in QEMU, host time of the mechanism with
//!   `--host`), the same way. It differs from run to run; the other file does not.
//!
//! Invariants: the output is a function of the results alone (no date, no wall time but the
//! mechanism file's values), so a resumed or merged run draws the same files. Policy `i` (in
//! the order of the file) has colour `i mod 18` and marker `i mod 8` of [`PALETTE`] and
//! [`Marker`], so no two of the first 72 policies look alike. A y axis is logarithmic when
//! every value is positive and the largest is at least ten times the smallest, with ticks at
//! 1-2-5 × 10^k (at decades only past four decades); otherwise linear from 0. Bars start at the
//! axis minimum. With `repeat` > 1 a point is the mean of its repetitions and carries an error
//! bar from the smallest to the largest (said under the legend). Failed points, missing values
//! and non-finite values are left out; a workload with nothing to plot gets no file.

use super::{Loaded, Results, mechanism_time};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value as Json;

/// Why a plot could not be drawn (the SVG backend writes to a string, so this is a bug here).
#[derive(Debug, Clone, PartialEq)]
pub struct PlotError {
    /// The file being drawn.
    pub file: String,
    /// What plotters said.
    pub message: String,
}

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "drawing {}: {} (a bug in xtask's plots; results.csv and summary.txt are written before the plots)",
            self.file, self.message
        )
    }
}

/// Policy colours: the ten of Tableau's palette, then eight darker or stronger ones.
pub const PALETTE: [RGBColor; 18] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0x80, 0x00, 0x00),
    RGBColor(0x00, 0x00, 0x75),
    RGBColor(0x46, 0x99, 0x90),
    RGBColor(0xb8, 0x86, 0x0b),
    RGBColor(0xf0, 0x32, 0xe6),
    RGBColor(0x80, 0x80, 0x00),
    RGBColor(0x4b, 0x00, 0x82),
];

/// Point markers, in the order policies take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Marker {
    /// Filled circle.
    Circle,
    /// Filled square.
    Square,
    /// Filled triangle, point up.
    TriangleUp,
    /// Filled diamond.
    Diamond,
    /// Filled triangle, point down.
    TriangleDown,
    /// Diagonal cross.
    Cross,
    /// Upright cross.
    Plus,
    /// Open circle.
    Ring,
}

/// Every marker.
pub const MARKERS: [Marker; 8] = [
    Marker::Circle,
    Marker::Square,
    Marker::TriangleUp,
    Marker::Diamond,
    Marker::TriangleDown,
    Marker::Cross,
    Marker::Plus,
    Marker::Ring,
];

/// The colour and marker of the `i`-th policy.
pub fn style(i: usize) -> (RGBColor, Marker) {
    (PALETTE[i % PALETTE.len()], MARKERS[i % MARKERS.len()])
}

/// A quantity plotted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Sim,
    Mech,
    Faults,
    Moved,
    Evicted,
}

impl Metric {
    fn title(self, results: &Results) -> String {
        match self {
            Metric::Sim => "simulated time (ms)".into(),
            Metric::Mech => format!("{} (ms, measured)", mechanism_time(results)),
            Metric::Faults => "device faults".into(),
            Metric::Moved => "pages moved (to device + to CPU)".into(),
            Metric::Evicted => "pages evicted".into(),
        }
    }

    fn value(self, r: &Json) -> Option<f64> {
        let n = |k: &str| r[k].as_f64();
        match self {
            Metric::Sim => n("sim_ns").map(|x| x / 1e6),
            Metric::Mech => n("mechanism_ns").map(|x| x / 1e6),
            Metric::Faults => n("dev_faults"),
            Metric::Moved => Some(n("to_dev")? + n("to_cpu")?),
            Metric::Evicted => n("evicted"),
        }
        .filter(|v| v.is_finite())
    }
}

/// The repetitions of one point: their mean, smallest and largest value, and how many.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    mean: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn stat(values: &[f64]) -> Option<Stat> {
    let v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    Some(Stat {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n: v.len(),
    })
}

/// A y axis: its range and ticks in data units; a log axis is drawn over log10 of them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Axis {
    pub log: bool,
    pub lo: f64,
    pub hi: f64,
    /// Labelled ticks.
    pub ticks: Vec<f64>,
    /// Grid lines between them.
    pub minor: Vec<f64>,
}

/// `m × 10^k`, computed so that ticks print exactly.
fn tick(m: u32, k: i32) -> f64 {
    if k >= 0 { f64::from(m) * 10f64.powi(k) } else { f64::from(m) / 10f64.powi(-k) }
}

impl Axis {
    /// The axis for these values (non-finite ones ignored).
    pub fn new(values: &[f64]) -> Axis {
        let v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !v.is_empty() && lo > 0.0 && hi / lo >= 10.0 { Axis::log(lo, hi) } else { Axis::linear(lo.min(0.0), hi) }
    }

    fn log(lo: f64, hi: f64) -> Axis {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let mut all: Vec<(u32, i32)> = Vec::new();
        for k in k0..=k1 {
            for m in [1, 2, 5] {
                all.push((m, k));
            }
        }
        // The 1-2-5 values just around the data.
        let first = all.iter().rposition(|&(m, k)| tick(m, k) <= lo * (1.0 + 1e-9)).unwrap_or(0);
        let last = all.iter().position(|&(m, k)| tick(m, k) >= hi * (1.0 - 1e-9)).unwrap_or(all.len() - 1);
        let mut major: Vec<(u32, i32)> = all[first..=last].to_vec();
        if hi / lo > 1e4 {
            // Past four decades, ticks at decades only, the axis widened to them.
            let (a, b) = (major[0].1, major[major.len() - 1].1 + i32::from(major[major.len() - 1].0 > 1));
            major = (a..=b).map(|k| (1, k)).collect();
        }
        let (lo, hi) = (tick(major[0].0, major[0].1), tick(major[major.len() - 1].0, major[major.len() - 1].1));
        let ticks: Vec<f64> = major.iter().map(|&(m, k)| tick(m, k)).collect();
        let minor = (k0 - 1..=k1 + 1)
            .flat_map(|k| (1..10).map(move |m| tick(m, k)))
            .filter(|t| *t >= lo && *t <= hi && !ticks.iter().any(|x| (x - t).abs() <= 1e-9 * t))
            .collect();
        Axis { log: true, lo, hi, ticks, minor }
    }

    fn linear(lo: f64, hi: f64) -> Axis {
        let lo = if lo.is_finite() { lo } else { 0.0 };
        let hi = if hi.is_finite() && hi > lo { hi } else { lo + 1.0 };
        let raw = (hi - lo) / 5.0;
        let k = raw.log10().floor() as i32;
        let (m, k) =
            [(1, k), (2, k), (5, k), (1, k + 1)].into_iter().find(|&(m, k)| tick(m, k) >= raw).unwrap_or((1, k + 1));
        let step = tick(m, k);
        let (a, b) = ((lo / step).floor() as i64, (hi / step - 1e-9).ceil() as i64);
        let ticks: Vec<f64> = (a..=b).map(|i| i as f64 * step).collect();
        let minor = (a..b).map(|i| (i as f64 + 0.5) * step).collect();
        Axis { log: false, lo: a as f64 * step, hi: b as f64 * step, ticks, minor }
    }

    /// Where `v` is drawn (log10 of it on a log axis; clamped to the axis).
    pub fn map(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        if self.log { v.log10() } else { v }
    }

    /// The label of a drawn position.
    fn label(&self, drawn: f64) -> String {
        let v = if self.log { 10f64.powf(drawn) } else { drawn };
        // Back to the tick it came from, so the label is exact.
        let v = self.ticks.iter().copied().find(|t| (t - v).abs() <= 1e-6 * t.abs().max(1e-12)).unwrap_or(v);
        number(v)
    }
}

/// A number in at most three significant digits, with k, M or G from ten thousand on.
pub(super) fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { format!("{v}") };
    }
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = x.abs().log10().floor() as i32;
    let decimals = (2 - digits).clamp(0, 12) as usize;
    let mut s = format!("{x:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    s + suffix
}

/// A workload's data: per policy, per ratio, its repetitions' results.
struct Data<'a> {
    policies: Vec<&'a str>,
    ratios: Vec<f64>,
    /// `[policy][ratio]`: the results without an error.
    results: Vec<Vec<Vec<&'a Json>>>,
}

impl Data<'_> {
    /// Per policy, the (ratio, statistics) of `m` where it has a value.
    fn series(&self, m: Metric) -> Vec<Vec<(f64, Stat)>> {
        self.results
            .iter()
            .map(|per| {
                per.iter()
                    .zip(&self.ratios)
                    .filter_map(|(rs, &o)| {
                        let v: Vec<f64> = rs.iter().filter_map(|r| m.value(r)).collect();
                        stat(&v).map(|s| (o, s))
                    })
                    .collect()
            })
            .collect()
    }
}

/// A linear axis with the ticks given: plotters' `WithKeyPoints` over `f64` takes no label
/// formatter, so this stands in for it.
#[derive(Debug, Clone)]
struct Ticked {
    lo: f64,
    hi: f64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        let f = if span > 0.0 { (v - self.lo) / span } else { 0.5 };
        limit.0 + ((limit.1 - limit.0) as f64 * f.clamp(-1.0, 2.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() { self.light.clone() } else { self.bold.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The x axis: the ratios swept, or one bar per policy at the one ratio.
enum X {
    Ratios(Vec<f64>),
    Bars(f64),
}

/// The plots of every workload: (file name, SVG).
pub fn plots(l: &Loaded, results: &Results) -> Result<Vec<(String, String)>, PlotError> {
    let mut workloads: Vec<&str> = Vec::new();
    let mut policies: Vec<&str> = Vec::new();
    let mut ratios: Vec<f64> = Vec::new();
    for k in &l.keys {
        if !workloads.contains(&k.0.as_str()) {
            workloads.push(&k.0);
        }
        if !policies.contains(&k.1.as_str()) {
            policies.push(&k.1);
        }
        if !ratios.iter().any(|o| (o - k.2).abs() < 1e-9) {
            ratios.push(k.2);
        }
    }
    ratios.sort_by(f64::total_cmp);
    let repeat = l.reps.iter().max().map_or(1, |r| r + 1);
    let mut out = Vec::new();
    for w in workloads {
        let per = policies
            .iter()
            .map(|p| {
                ratios
                    .iter()
                    .map(|&o| {
                        l.points
                            .iter()
                            .zip(&l.keys)
                            .filter(|(_, k)| k.0 == w && k.1 == *p && (k.2 - o).abs() < 1e-9)
                            .filter_map(|(pt, _)| results.get(&pt.id))
                            .filter(|r| r.get("error").is_none())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let data = Data { policies: policies.clone(), ratios: ratios.clone(), results: per };
        let stem = format!("plot-{}", w.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let figures = [
            (format!("{stem}.svg"), vec![Metric::Sim, Metric::Faults, Metric::Moved, Metric::Evicted]),
            (format!("{stem}-mech.svg"), vec![Metric::Mech]),
        ];
        for (file, metrics) in figures {
            let series: Vec<_> = metrics.iter().map(|m| data.series(*m)).collect();
            if series.iter().all(|s| s.iter().all(Vec::is_empty)) {
                continue;
            }
            let title = format!("{} — {w}", l.exp.name.get_ref());
            let svg = figure(&title, &data, &metrics, &series, results, repeat)
                .map_err(|message| PlotError { file: file.clone(), message })?;
            out.push((file, svg));
        }
    }
    Ok(out)
}

const LEGEND_WIDTH: u32 = 250;
const PANEL: (u32, u32) = (430, 330);
const TITLE: u32 = 34;

/// One SVG: `metrics` in panels (two per row), the legend on the right.
fn figure(
    title: &str,
    data: &Data<'_>,
    metrics: &[Metric],
    series: &[Vec<Vec<(f64, Stat)>>],
    results: &Results,
    repeat: u32,
) -> Result<String, String> {
    let x = if data.ratios.len() > 1 { X::Ratios(data.ratios.clone()) } else { X::Bars(data.ratios[0]) };
    let title = match x {
        X::Ratios(_) => title.to_string(),
        X::Bars(o) => format!("{title} at oversubscription {}", number(o)),
    };
    let cols = metrics.len().min(2) as u32;
    let rows = metrics.len().div_ceil(2) as u32;
    let legend_h = 30 + 20 * data.policies.len() as u32 + 60;
    let size = (PANEL.0 * cols + LEGEND_WIDTH, (PANEL.1 * rows).max(legend_h) + TITLE);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root.titled(&title, ("sans-serif", 18)).map_err(|e| e.to_string())?;
        let (plots, legend_area) = root.split_horizontally(PANEL.0 * cols);
        let (plots, _) = plots.split_vertically(PANEL.1 * rows);
        let panels = plots.split_evenly((rows as usize, cols as usize));
        for ((m, s), area) in metrics.iter().zip(series).zip(&panels) {
            panel(area, &m.title(results), &x, s)?;
        }
        legend(&legend_area, &data.policies, matches!(x, X::Ratios(_)), repeat)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One panel: a line (or a bar) per policy, a marker at each point, error bars over repetitions.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x: &X,
    series: &[Vec<(f64, Stat)>],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let values: Vec<f64> = series.iter().flatten().flat_map(|(_, s)| [s.min, s.mean, s.max]).collect();
    let y = Axis::new(&values);
    let caption = if y.log { format!("{title}, log") } else { title.to_string() };
    let yr = Ticked {
        lo: y.map(y.lo),
        hi: y.map(y.hi),
        bold: y.ticks.iter().map(|t| y.map(*t)).collect(),
        light: y.minor.iter().map(|t| y.map(*t)).collect(),
    };
    let (xr, xdesc) = match x {
        X::Ratios(r) => {
            let (a, b) = (r[0], r[r.len() - 1]);
            let pad = (b - a) * 0.05;
            let pad = if pad > 0.0 { pad } else { 0.5 };
            let xr = Ticked { lo: a - pad, hi: b + pad, bold: r.clone(), light: vec![] };
            (xr, "oversubscription (footprint / device memory)".to_string())
        }
        X::Bars(_) => {
            let xr = Ticked { lo: -0.6, hi: series.len() as f64 - 0.4, bold: vec![], light: vec![] };
            (xr, "policy (as in the legend)".to_string())
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(38)
        .y_label_area_size(52)
        .build_cartesian_2d(xr, yr)
        .map_err(e)?;
    chart
        .configure_mesh()
        .y_label_formatter(&|v| y.label(*v))
        .x_label_formatter(&|v| number(*v))
        .x_desc(xdesc)
        .bold_line_style(RGBColor(200, 200, 200))
        .light_line_style(RGBColor(238, 238, 238))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(e)?;
    if values.is_empty() {
        let mid = ((chart.x_range().start + chart.x_range().end) / 2.0, y.map((y.lo + y.hi) / 2.0));
        let style = TextStyle::from(("sans-serif", 13)).pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(std::iter::once(Text::new("no results", mid, style))).map_err(e)?;
        return Ok(());
    }
    for (i, pts) in series.iter().enumerate() {
        let (c, _) = style(i);
        match x {
            X::Ratios(_) => {
                if pts.len() > 1 {
                    chart
                        .draw_series(LineSeries::new(pts.iter().map(|(o, s)| (*o, y.map(s.mean))), c.stroke_width(2)))
                        .map_err(e)?;
                }
            }
            X::Bars(_) => {
                if let Some((_, s)) = pts.first() {
                    let x = i as f64;
                    let bar =
                        Rectangle::new([(x - 0.35, y.map(y.lo)), (x + 0.35, y.map(s.mean))], c.mix(0.35).filled());
                    chart.draw_series(std::iter::once(bar)).map_err(e)?;
                }
            }
        }
        for (o, s) in pts {
            let at = (if matches!(x, X::Bars(_)) { i as f64 } else { *o }, y.map(s.mean));
            if s.n > 1 {
                let top = chart.backend_coord(&(at.0, y.map(s.max)));
                let bottom = chart.backend_coord(&(at.0, y.map(s.min)));
                let dy = bottom.1 - top.1;
                let bar = EmptyElement::at((at.0, y.map(s.max)))
                    + PathElement::new(vec![(-4, 0), (4, 0), (0, 0), (0, dy), (-4, dy), (4, dy)], c.stroke_width(1));
                chart.plotting_area().draw(&bar).map_err(e)?;
            }
            marker(chart.plotting_area(), at, i)?;
        }
    }
    Ok(())
}

/// The legend: a marker (on a line segment when the plot has lines) and the name per policy,
/// and what the points and bars are when there are repetitions.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    policies: &[&str],
    lines: bool,
    repeat: u32,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let left = Pos::new(HPos::Left, VPos::Center);
    let text = |s: &str, at: (i32, i32), size: u32| {
        Text::new(s.to_string(), at, TextStyle::from(("sans-serif", size)).pos(left))
    };
    area.draw(&text("policy", (12, 24), 14)).map_err(e)?;
    let mut y = 46;
    for (i, p) in policies.iter().enumerate() {
        let (c, _) = style(i);
        if lines {
            area.draw(&PathElement::new(vec![(10, y), (40, y)], c.stroke_width(2))).map_err(e)?;
        }
        marker(area, (25, y), i)?;
        area.draw(&text(p, (50, y), 13)).map_err(e)?;
        y += 20;
    }
    if repeat > 1 {
        y += 10;
        area.draw(&text(&format!("points: mean of {repeat} repetitions"), (12, y), 12)).map_err(e)?;
        area.draw(&text("error bars: min–max", (12, y + 16), 12)).map_err(e)?;
    }
    Ok(())
}

/// The `i`-th policy's marker at `at`.
fn marker<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    i: usize,
) -> Result<(), String> {
    let (c, m) = style(i);
    let (fill, line) = (c.filled(), c.stroke_width(2));
    let r = 4;
    let e = EmptyElement::at(at);
    match m {
        Marker::Circle => area.draw(&(e + Circle::new((0, 0), r, fill))),
        Marker::Square => area.draw(&(e + Rectangle::new([(-r, -r), (r, r)], fill))),
        Marker::TriangleUp => area.draw(&(e + Polygon::new(vec![(0, -r - 1), (r + 1, r), (-r - 1, r)], fill))),
        Marker::Diamond => area.draw(&(e + Polygon::new(vec![(0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)], fill))),
        Marker::TriangleDown => area.draw(&(e + Polygon::new(vec![(0, r + 1), (r + 1, -r), (-r - 1, -r)], fill))),
        Marker::Cross => area.draw(&(e + PathElement::new(vec![(-r, -r), (r, r), (0, 0), (-r, r), (r, -r)], line))),
        Marker::Plus => {
            area.draw(&(e + PathElement::new(vec![(-r - 1, 0), (r + 1, 0), (0, 0), (0, -r - 1), (0, r + 1)], line)))
        }
        Marker::Ring => area.draw(&(e + Circle::new((0, 0), r, line))),
    }
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
