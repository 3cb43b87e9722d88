//! What a run of an experiment file would do, without running it: `cargo xtask experiment FILE
//! --check` ([`check`]) and `--list` ([`list`]).
//!
//! Both read only a [`Loaded`] experiment (the file already checked by [`super::load`]): they
//! build, boot and write nothing.

use super::{Loaded, out_dir};
use std::fmt::Write as _;
use std::path::Path;

/// Points per guest boot when the file does not say (`points_per_boot`).
pub const POINTS_PER_BOOT: u32 = 4;

/// The number of points of each guest boot, in order, for `points` points at most `per` a
/// boot with `jobs` guests at a time: `per` while there is plenty, then each boot takes its
/// share of what is left (`remaining / jobs`, rounded up), so the last boots are small and the
/// guests finish close together instead of one guest running a whole boot alone at the end
/// (an oversubscribed reproduce.toml boot of 10 points takes minutes under TCG).
pub fn boot_sizes(points: usize, per: usize, jobs: usize) -> Vec<usize> {
    let (per, jobs) = (per.max(1), jobs.max(1));
    let mut sizes = Vec::new();
    let mut left = points;
    while left > 0 {
        let n = per.min(left.div_ceil(jobs));
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// The distinct values of `f` over the points' keys, in first-seen order.
fn distinct<T: PartialEq + Clone>(l: &Loaded, f: impl Fn(&(String, String, f64), u32) -> T) -> Vec<T> {
    let mut v: Vec<T> = Vec::new();
    for (k, &r) in l.keys.iter().zip(&l.reps) {
        let x = f(k, r);
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

/// `--check`: the file is valid, and what a run would do: the points (by workload, policy,
/// ratio and repetition), where (the machine, or the host), in how many guest boots, and where
/// the results would go.
pub fn check(l: &Loaded, file: &Path, root: &Path, host: bool, jobs: usize) -> String {
    let mut s = String::new();
    let name = l.exp.name.get_ref();
    let _ = writeln!(s, "{}: ok (checked; nothing was built or booted)", file.display());
    let _ = writeln!(
        s,
        "  experiment  {name}{}",
        if l.exp.description.is_empty() { String::new() } else { format!(": {}", l.exp.description) }
    );
    let machine = l.exp.machine.as_ref().map_or("qemu/default.toml", |m| m.get_ref().as_str());
    let _ = writeln!(s, "  machine     {machine}: {}", l.machine.description);
    let (w, p, o, r) = (
        distinct(l, |k, _| k.0.clone()).len(),
        distinct(l, |k, _| k.1.clone()).len(),
        distinct(l, |k, _| k.2.to_bits()).len(),
        distinct(l, |_, r| r).len(),
    );
    let full = w * p * o * r;
    let _ = writeln!(
        s,
        "  points      {} ({w} workload group(s) x {p} polic(ies) x {o} ratio(s) x {r} repetition(s){})",
        l.points.len(),
        if full == l.points.len() {
            String::new()
        } else {
            "; some policies run at only some ratios or on some workloads".into()
        }
    );
    if host {
        let _ = writeln!(s, "  run         on the host (the HMM stack over the host platform), {jobs} at a time");
    } else {
        let per = l.exp.points_per_boot.as_ref().map_or(POINTS_PER_BOOT, |p| *p.get_ref()) as usize;
        let boots = boot_sizes(l.points.len(), per, jobs).len();
        let _ = writeln!(
            s,
            "  run         in QEMU guests: {boots} boot(s) of up to {per} point(s) (fewer in the last ones), {} at a time",
            jobs.min(boots).max(1)
        );
    }
    let _ = writeln!(
        s,
        "  results     {}/RUN-ID/ (a new run folder; `latest` beside it links to it)",
        out_dir(root, l).display()
    );
    s
}

/// `--list`: one line per point, in the order a run runs them: id, label, workload, policy,
/// oversubscription ratio and repetition.
pub fn list(l: &Loaded) -> String {
    let width = |f: &dyn Fn(usize) -> usize, head: &str| (0..l.points.len()).map(f).max().unwrap_or(0).max(head.len());
    let lw = width(&|i| l.points[i].label.chars().count(), "label");
    let ww = width(&|i| l.keys[i].0.chars().count(), "workload");
    let pw = width(&|i| l.keys[i].1.chars().count(), "policy");
    let mut s =
        format!("{:>4}  {:<lw$}  {:<ww$}  {:<pw$}  {:>6}  repetition\n", "id", "label", "workload", "policy", "ratio");
    for (i, p) in l.points.iter().enumerate() {
        let (w, pol, o) = &l.keys[i];
        let _ = writeln!(s, "{:>4}  {:<lw$}  {w:<ww$}  {pol:<pw$}  {o:>6}  {}", p.id, p.label, l.reps[i]);
    }
    s
}
