//! The run folder: one per run of an experiment, `target/experiments/NAME/RUN-ID/`.
//!
//! Owns the folder's layout, its provenance, the per-point records the results are rebuilt
//! from, and shards of the points. A run folder holds:
//!
//! - `experiment.toml` and `machine.toml`: copies of the experiment and machine files as run;
//! - `provenance.toml`: the git revision and dirty state, the command line, the date, the
//!   xtask, rustc and QEMU versions, the host, the generators' seeds, the number of points and
//!   a hash of their encoding; then one `[[resumed]]` table per later invocation (a resume, a
//!   shard, a merge);
//! - `points.jsonl` (or `points-shard-I-of-N.jsonl` for a shard): one line per finished point,
//!   `{"id":N,"result":{...},"trace":[...]}`, appended as each point finishes;
//! - what the report writes from the records: `results.csv`, `results.columns.csv`,
//!   `summary.txt`, `plot-WORKLOAD.svg` (simulated time and counts) and `plot-WORKLOAD-mech.svg`
//!   (the mechanism's measured time) per workload (`experiment::plot`), `trace.json`; and
//!   `image-P-B.txt`, the points of a guest boot (from point P, the invocation's boot B), with
//!   `guest-P-B.log` beside it, that guest's serial log, when a point of the boot failed.
//!
//! Invariants: a run id (`2026-12-02T14-05-33Z`, UTC, with `-1`, `-2`... when that second is
//! taken) is never reused: the folder is made with `create_dir`, which fails if it exists.
//! `latest` beside the runs is a symlink to the newest, replaced atomically (rename). A record
//! line is written whole with one `write` on a file opened for appending; a line cut short by a
//! kill is the last one and is cut off before the next append. The results of a run are
//! exactly its records: a point with a record without an error is finished and is not run
//! again by a resume; for each point the record kept is its last one without an error, else
//! its last one. The files the report writes are written to a temporary name and renamed.

use crate::Result;
use crate::experiment::{self, Loaded};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The symlink beside the runs naming the newest.
pub const LATEST: &str = "latest";

/// A shard of an experiment's points: those whose id is `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, from 0.
    pub index: u32,
    /// How many.
    pub count: u32,
}

impl Shard {
    /// Parses `I/N` (0 <= I < N).
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || format!("--shard takes I/N with 0 <= I < N, e.g. --shard 0/4 (got '{s}')");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<u32>().map_err(|_| bad())?, n.trim().parse::<u32>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether point `id` is in this shard. The partition depends only on the id, so every
    /// shard of a run, wherever it runs, agrees on it; consecutive points (the sweep's
    /// neighbours) go to different shards.
    pub fn contains(&self, id: u32) -> bool {
        id % self.count == self.index
    }

    /// The record file of this shard.
    fn records_file(&self) -> String {
        format!("points-shard-{}-of-{}.jsonl", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One invocation of the xtask on a run: what made the results, and with what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invocation {
    /// What it did: `run`, `resume`, `merge`, `default-job` (the experiment `cargo xtask
    /// qemu` runs), `test` (a check of `cargo xtask test`).
    pub action: String,
    /// UTC, RFC 3339.
    pub date: String,
    /// The command line, shell-quoted.
    pub command: String,
    /// The current directory.
    pub cwd: String,
    /// The host's name.
    pub host: String,
    /// `git rev-parse HEAD` of the checkout, or why there is none.
    pub git_revision: String,
    /// Whether the checkout had changes `git status --porcelain` lists (`None`: no git).
    pub git_dirty: Option<bool>,
    /// The files it lists, at most 20.
    pub git_changes: Vec<String>,
    /// This xtask's version.
    pub xtask: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `qemu-system-x86_64 --version`'s first line (or why there is none).
    pub qemu: String,
    /// The shard it ran (`I/N`), if any.
    pub shard: Option<String>,
}

/// `provenance.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// The experiment's name.
    pub experiment: String,
    /// The experiment file as given.
    pub file: String,
    /// The machine file, relative to the checkout.
    pub machine: String,
    /// Whether the points run on the host (`--host`) instead of in QEMU guests.
    pub on_host: bool,
    /// How many points the experiment has.
    pub points: usize,
    /// FNV-1a 64 of the points' encodings: a resume checks the experiment still expands to
    /// the same points.
    pub points_hash: String,
    /// Every seed a workload generator gets, ascending (per point: results.csv's `seeds`).
    pub seeds: Vec<u64>,
    /// The invocation that made the run.
    pub started: Invocation,
    /// Every later one, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<Invocation>,
}

/// A point's record: its result and its trace events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The point's id.
    pub id: u32,
    /// The `@@POINT` JSON, or an error object.
    pub result: Json,
    /// Its trace events (`@@TRACE` JSON), in order.
    #[serde(default)]
    pub trace: Vec<Json>,
}

impl Record {
    /// Whether the point finished (a result without an error).
    pub fn finished(&self) -> bool {
        self.result.get("error").is_none_or(Json::is_null)
    }
}

/// An open run folder: where this invocation appends its records.
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// The shard this invocation runs, if any.
    pub shard: Option<Shard>,
    records: Mutex<std::fs::File>,
}

/// `YYYY-MM-DDTHH-MM-SSZ` (`sep` `-`) or RFC 3339 (`sep` `:`) for seconds since 1970, UTC.
pub fn utc(secs: u64, sep: char) -> String {
    let (days, s) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}{sep}{:02}{sep}{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// FNV-1a, 64 bits: stable across runs, builds and machines (std's hashers are not promised
/// to be).
pub fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The hash of `l`'s points as the guest gets them.
pub fn points_hash(l: &Loaded) -> String {
    let text: String = l.points.iter().map(|p| p.encode()).collect();
    format!("{:016x}", fnv64(text.as_bytes()))
}

/// Shell-quotes one word where it needs it.
fn quote(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// Runs a tool for its first output line, or says why there is none.
fn tool_line(prog: &str, args: &[&str], dir: &Path) -> String {
    match std::process::Command::new(prog).args(args).current_dir(dir).output() {
        Ok(o) if o.status.success() => {
            String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string()
        }
        Ok(o) => format!("unknown ({prog} {} exited with {})", args.join(" "), o.status),
        Err(e) => format!("unknown ({prog}: {e})"),
    }
}

impl Invocation {
    /// This process's invocation, in the checkout at `root`.
    pub fn now(action: &str, root: &Path, shard: Option<Shard>) -> Invocation {
        let git = |args: &[&str]| std::process::Command::new("git").args(args).current_dir(root).output();
        let (git_revision, git_dirty, git_changes) = match git(&["rev-parse", "HEAD"]) {
            Ok(o) if o.status.success() => {
                let rev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                match git(&["status", "--porcelain"]) {
                    Ok(s) if s.status.success() => {
                        let changes: Vec<String> =
                            String::from_utf8_lossy(&s.stdout).lines().map(|l| l.trim().to_string()).collect();
                        (rev, Some(!changes.is_empty()), changes.into_iter().take(20).collect())
                    }
                    _ => (rev, None, Vec::new()),
                }
            }
            Ok(_) => ("unknown (not a git checkout)".into(), None, Vec::new()),
            Err(e) => (format!("unknown (git: {e})"), None, Vec::new()),
        };
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "unknown".into(), |h| h.trim().into());
        Invocation {
            action: action.into(),
            date: utc(now_secs(), ':'),
            command: std::iter::once("cargo xtask".to_string())
                .chain(std::env::args().skip(1).map(|a| quote(&a)))
                .collect::<Vec<_>>()
                .join(" "),
            cwd: std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string()),
            host,
            git_revision,
            git_dirty,
            git_changes,
            xtask: env!("CARGO_PKG_VERSION").into(),
            rustc: tool_line(&std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()), &["--version"], root),
            qemu: tool_line(crate::setup::QEMU, &["--version"], root),
            shard: shard.map(|s| s.to_string()),
        }
    }
}

/// The machine file `l` names, relative to the checkout.
pub fn machine_file(l: &Loaded) -> String {
    l.exp.machine.as_ref().map_or_else(|| "qemu/default.toml".to_string(), |m| m.get_ref().clone())
}

/// Writes `data` to `dir/name` through a temporary file (tempfile's, `.NAME.` and random
/// characters, with the mode `std::fs::write` gives) and a rename, so a reader (or a kill) never
/// sees half a file; a failed write leaves no temporary file behind.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let prefix = format!(".{name}.");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    tmp.write_all(data).map_err(|e| format!("writing {}: {e}", tmp.path().display()))?;
    tmp.persist(&path).map(drop).map_err(|e| format!("renaming {} to {}: {e}", e.file.path().display(), path.display()))
}

/// Makes a new run folder under `base` (`target/experiments/NAME`), named by the date (with a
/// counter when that second's name is taken), and points `latest` at it.
pub fn new_dir(base: &Path, secs: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let stamp = utc(secs, '-');
    for n in 0..1000 {
        let id = if n == 0 { stamp.clone() } else { format!("{stamp}-{n}") };
        let dir = base.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                // The new link under a name of tempfile's, then renamed over the old one.
                let latest = base.join(LATEST);
                let prefix = format!(".{LATEST}.");
                tempfile::Builder::new()
                    .prefix(&prefix)
                    .make_in(base, |tmp| std::os::unix::fs::symlink(&id, tmp))
                    .and_then(|tmp| tmp.persist(&latest).map_err(|e| e.error))
                    .map_err(|e| format!("pointing {} at {id}: {e}", latest.display()))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
    Err(format!("{}: 1000 runs already started in the second {stamp}", base.display()))
}

impl Run {
    /// Starts a run of `l` (read from `file`) in a new folder under `base`: the copies of the
    /// experiment and machine files and the provenance written before any point runs.
    pub fn create(base: &Path, root: &Path, file: &Path, l: &Loaded, inv: Invocation, on_host: bool) -> Result<Run> {
        let text = std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
        let mfile = machine_file(l);
        let mtext = std::fs::read(root.join(&mfile)).map_err(|e| format!("{mfile}: cannot read: {e}"))?;
        let dir = new_dir(base, now_secs())?;
        std::fs::write(dir.join("experiment.toml"), text).map_err(|e| format!("writing {}: {e}", dir.display()))?;
        std::fs::write(dir.join("machine.toml"), mtext).map_err(|e| format!("writing {}: {e}", dir.display()))?;
        let mut seeds: Vec<u64> = l.points.iter().flat_map(experiment::point_seeds).collect();
        seeds.sort_unstable();
        seeds.dedup();
        let shard = inv.shard.as_deref().map(Shard::parse).transpose()?;
        let prov = Provenance {
            experiment: l.exp.name.get_ref().clone(),
            file: file.display().to_string(),
            machine: mfile,
            on_host,
            points: l.points.len(),
            points_hash: points_hash(l),
            seeds,
            started: inv,
            resumed: Vec::new(),
        };
        let text = toml::to_string(&prov).map_err(|e| format!("provenance: {e}"))?;
        write_atomic(&dir, "provenance.toml", text.as_bytes())?;
        Run::open_records(dir, shard)
    }

    /// Opens an existing run folder to add to it (a resume or a shard), recording `inv`.
    pub fn reopen(dir: &Path, inv: Invocation) -> Result<Run> {
        let shard = inv.shard.as_deref().map(Shard::parse).transpose()?;
        add_invocation(dir, &inv)?;
        Run::open_records(dir.to_path_buf(), shard)
    }

    fn open_records(dir: PathBuf, shard: Option<Shard>) -> Result<Run> {
        let name = shard.map_or_else(|| "points.jsonl".to_string(), |s| s.records_file());
        let path = dir.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        // A line cut short by a kill ends the file: cut it off, so the next record starts on
        // a line of its own.
        let data = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if !data.is_empty() && !data.ends_with(b"\n") {
            let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            f.set_len(keep as u64).map_err(|e| format!("cutting the partial last line of {}: {e}", path.display()))?;
        }
        Ok(Run { dir, shard, records: Mutex::new(f) })
    }

    /// Appends a finished (or failed) point's record, whole, and flushes it.
    pub fn record(&self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r).map_err(|e| format!("point {}: {e}", r.id))?;
        line.push('\n');
        let mut f = self.records.lock().unwrap();
        f.write_all(line.as_bytes())
            .and_then(|()| f.flush())
            .map_err(|e| format!("recording point {} in {}: {e}", r.id, self.dir.display()))
    }
}

/// Reads the provenance of the run folder `dir`.
pub fn provenance(dir: &Path) -> Result<Provenance> {
    let p = dir.join("provenance.toml");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| format!("{}: cannot read: {e} (is {} a run folder?)", p.display(), dir.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {}", p.display(), e.message()))
}

/// Every record in the run folder `dir` (all its record files), one per point: its last record
/// without an error, else its last one.
pub fn read_records(dir: &Path) -> Result<BTreeMap<u32, Record>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("points") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    let mut out: BTreeMap<u32, Record> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let r: Record = match serde_json::from_str(line) {
                Ok(r) => r,
                // The last line of a file a kill cut short.
                Err(_) if i + 1 == lines.len() && !complete => continue,
                Err(e) => {
                    return Err(format!(
                        "{}:{}: not a point record: {e}; the file is damaged: remove the line, and resume to run the point again",
                        f.display(),
                        i + 1
                    ));
                }
            };
            match out.get(&r.id) {
                Some(old) if old.finished() && !r.finished() => {}
                _ => {
                    out.insert(r.id, r);
                }
            }
        }
    }
    Ok(out)
}

/// The results and trace events of `records`, the events in point order.
pub fn results_of(records: &BTreeMap<u32, Record>) -> (experiment::Results, Vec<Json>) {
    let results = records.iter().map(|(id, r)| (*id, r.result.clone())).collect();
    let traces = records.values().flat_map(|r| r.trace.iter().cloned()).collect();
    (results, traces)
}

/// A run folder named on the command line: a path, or one relative to
/// `target/experiments/` (`default/latest`).
pub fn resolve(root: &Path, arg: &str) -> Result<PathBuf> {
    let given = PathBuf::from(arg);
    let under = root.join("target/experiments").join(arg);
    for p in [&given, &under] {
        if p.join("provenance.toml").is_file() {
            return p.canonicalize().map_err(|e| format!("{}: {e}", p.display()));
        }
    }
    let runs = root.join("target/experiments");
    let mut known: Vec<String> = std::fs::read_dir(&runs)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(LATEST).exists())
        .map(|e| format!("{}/{LATEST}", e.file_name().to_string_lossy()))
        .collect();
    known.sort();
    Err(format!(
        "{arg}: not a run folder (no provenance.toml there, nor in {}); give the folder a run printed, e.g. {}",
        under.display(),
        if known.is_empty() { "target/experiments/default/latest".to_string() } else { known.join(", ") }
    ))
}

/// Checks that the machine file `l` names is as it was when the run in `dir` started (its copy
/// is `machine.toml` there): a resume must run its points on the same machine.
pub fn check_machine(dir: &Path, root: &Path, l: &Loaded) -> Result<()> {
    let mfile = machine_file(l);
    let now = std::fs::read(root.join(&mfile)).map_err(|e| format!("{mfile}: cannot read: {e}"))?;
    let then = std::fs::read(dir.join("machine.toml")).map_err(|e| format!("{}/machine.toml: {e}", dir.display()))?;
    if now != then {
        return Err(format!(
            "{mfile} changed since the run in {} started (its copy is machine.toml there): restore it, or start a new run",
            dir.display()
        ));
    }
    Ok(())
}

/// Checks that `l`, loaded from the copy in the run folder `dir`, expands to the points the
/// run started with.
pub fn check_points(dir: &Path, l: &Loaded, prov: &Provenance) -> Result<()> {
    let hash = points_hash(l);
    if l.points.len() != prov.points || hash != prov.points_hash {
        return Err(format!(
            "the experiment expands to other points now ({} points, hash {hash}) than when the run in {} started ({} points, hash {}; git revision {}): the code or its defaults changed; start a new run",
            l.points.len(),
            dir.display(),
            prov.points,
            prov.points_hash,
            prov.started.git_revision
        ));
    }
    Ok(())
}

/// Adds `inv` to the provenance of the run folder `dir`, as a `[[resumed]]` table appended
/// with one write (shards starting at once each add theirs whole).
pub fn add_invocation(dir: &Path, inv: &Invocation) -> Result<()> {
    let mut text = String::from("\n[[resumed]]\n");
    text += &toml::to_string(inv).map_err(|e| format!("provenance: {e}"))?;
    let p = dir.join("provenance.toml");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("adding to {}: {e}", p.display()))
}

/// The records of a boot's (or a host run's) results, each with its point's trace events.
pub fn records_of(results: &experiment::Results, traces: &[Json]) -> Vec<Record> {
    let mut by_point: BTreeMap<u64, Vec<Json>> = BTreeMap::new();
    for t in traces {
        by_point.entry(t["point"].as_u64().unwrap_or(u64::MAX)).or_default().push(t.clone());
    }
    results
        .iter()
        .map(|(id, r)| Record {
            id: *id,
            result: r.clone(),
            trace: by_point.remove(&u64::from(*id)).unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
