//! Sweeps on a Slurm cluster: the job scripts, their submission and the wait for them.
//!
//! `cargo xtask experiment FILE --slurm [--partition P] [--tasks N] [--wait] [--kernel ELF]` hands
//! a sweep to Slurm as two jobs:
//!
//! - a job array of N tasks (`sbatch --array=0-(N-1)`), task i running shard i/N of the points
//!   (`cargo xtask experiment FILE --shard i/N`) into the run folder, and
//! - a merge job that waits for every task to succeed (`--dependency=afterok:ARRAY`, and
//!   `--kill-on-invalid-dep=yes`, so a failed shard cancels it instead of leaving it pending
//!   forever) and merges the shards' results into the CSV, tables and plots a local run gives.
//!
//! Both run the xtask binary that submitted them, copied into the run folder
//! (`RUN/slurm/xtask`): no task builds anything, so the tasks do not contend for cargo's locks on
//! the shared `target/`, and a rebuild of the checkout while the jobs wait in the queue does not
//! change what they run. Both start in the checkout's root (the workspace is found from the
//! current directory), which, as the run folder, must be on a file system the compute nodes
//! share.
//!
//! The run folder gets `slurm/shards.sh` and `slurm/merge.sh` (plain bash scripts: the sbatch
//! options are on sbatch's command line, which each script's header records), the tasks' logs
//! `slurm/shard-I.out` and the merge's `slurm/merge.out`.
//!
//! [`wait`] polls `scontrol show job` (and `sacct` once slurmctld has forgotten a job) until the
//! merge job ends, bounded by a timeout; a failed shard is named with its log. Every Slurm command
//! runs through a [`Client`], which can point the commands at a cluster of its own
//! (`SLURM_CONF`), as the cluster test does ([`cluster`]).

pub mod check;
pub mod cluster;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// In a shard's arguments, replaced by the array task's shard: `$SLURM_ARRAY_TASK_ID/N`.
pub const SHARD: &str = "{shard}";

/// What can go wrong handing a sweep to Slurm.
#[derive(Debug, Clone, PartialEq)]
pub enum SlurmError {
    /// A Slurm command is not on `PATH`.
    NotInstalled {
        /// The command.
        tool: String,
    },
    /// A Slurm command failed.
    Command {
        /// The command line.
        command: String,
        /// Its exit status, or why it did not run.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `sbatch --parsable` printed something that is not a job id.
    BadJobId {
        /// What it printed.
        output: String,
    },
    /// Reading or writing a file of the run folder.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: String,
    },
    /// The sweep cannot be written as given.
    Invalid {
        /// What is wrong.
        what: String,
    },
    /// The jobs did not end within the timeout.
    Timeout {
        /// The timeout in seconds.
        secs: u64,
        /// The jobs still there.
        jobs: Vec<u64>,
    },
    /// A job ended in a state other than COMPLETED.
    Failed {
        /// What ended how, with where its log is.
        what: String,
    },
    /// Neither slurmctld nor the accounting database knows the job.
    Lost {
        /// The job.
        job: u64,
        /// Its log.
        log: PathBuf,
    },
}

impl fmt::Display for SlurmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled { tool } => write!(
                f,
                "`{tool}` is not installed: run this on a Slurm cluster's login node, or install Slurm's client (apt-get install slurm-client)"
            ),
            Self::Command { command, status, stderr } => {
                write!(f, "`{command}` failed ({status}): {}", stderr.trim())?;
                if command.starts_with("sbatch") {
                    write!(f, "; `sinfo` lists the partitions this cluster has (--partition P picks one)")?;
                }
                Ok(())
            }
            Self::BadJobId { output } => write!(f, "sbatch --parsable printed {output:?}, not a job id"),
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Invalid { what } => write!(f, "{what}"),
            Self::Timeout { secs, jobs } => {
                let ids: Vec<String> = jobs.iter().map(u64::to_string).collect();
                write!(
                    f,
                    "the jobs did not end within {secs} s; they are still queued or running (`squeue -j {}`; `scancel {}` stops them)",
                    ids.join(","),
                    ids.join(" ")
                )
            }
            Self::Failed { what } => write!(f, "{what}"),
            Self::Lost { job, log } => write!(
                f,
                "job {job} is no longer known to slurmctld and sacct has no record of it (no accounting); its log is {}",
                log.display()
            ),
        }
    }
}

impl From<SlurmError> for String {
    fn from(e: SlurmError) -> Self {
        e.to_string()
    }
}

/// Runs Slurm's commands, on the cluster `SLURM_CONF` names (the environment's, or `conf`).
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The `slurm.conf` of the cluster to talk to; `None`: Slurm's own default.
    pub conf: Option<PathBuf>,
}

impl Client {
    /// A command of Slurm's, set up for this cluster.
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        if let Some(conf) = &self.conf {
            c.env("SLURM_CONF", conf);
        }
        c
    }

    /// Runs `tool args` and returns its stdout.
    fn run(&self, tool: &str, args: &[String]) -> Result<String, SlurmError> {
        let line = std::iter::once(tool.to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
        let out = self.command(tool).args(args).output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SlurmError::NotInstalled { tool: tool.into() }
            } else {
                SlurmError::Command { command: line.clone(), status: e.to_string(), stderr: String::new() }
            }
        })?;
        if !out.status.success() {
            return Err(SlurmError::Command {
                command: line,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A sweep to hand to Slurm.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The job names' suffix (the experiment's name): `hmm-NAME` and `hmm-NAME-merge`.
    pub name: String,
    /// The run folder (absolute): the shards write into it; `slurm/` in it gets the scripts,
    /// the binary and the logs.
    pub run_dir: PathBuf,
    /// Where the jobs start (absolute): the checkout's root.
    pub workdir: PathBuf,
    /// The xtask binary the jobs run (copied into the run folder by [`write`]).
    pub xtask: PathBuf,
    /// A shard's arguments to the xtask; an argument containing [`SHARD`] gets the task's shard
    /// there.
    pub shard_args: Vec<String>,
    /// The merge's arguments to the xtask.
    pub merge_args: Vec<String>,
    /// The array's tasks (shards), at least 1.
    pub tasks: u32,
    /// CPUs each task asks for (`--cpus-per-task`), at least 1.
    pub cpus_per_task: u32,
    /// `--partition`; `None`: the cluster's default.
    pub partition: Option<String>,
}

/// The files [`write`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Scripts {
    /// `RUN/slurm/`.
    pub dir: PathBuf,
    /// The job array's script.
    pub shards: PathBuf,
    /// The merge job's script.
    pub merge: PathBuf,
    /// The copy of the xtask binary both run.
    pub xtask: PathBuf,
}

impl Scripts {
    /// Where [`write`] puts them for `run_dir`.
    pub fn at(run_dir: &Path) -> Self {
        let dir = run_dir.join("slurm");
        Self { shards: dir.join("shards.sh"), merge: dir.join("merge.sh"), xtask: dir.join("xtask"), dir }
    }

    /// Array task `i`'s log.
    pub fn shard_log(&self, i: u32) -> PathBuf {
        self.dir.join(format!("shard-{i}.out"))
    }

    /// The merge job's log.
    pub fn merge_log(&self) -> PathBuf {
        self.dir.join("merge.out")
    }
}

/// Quotes `s` for bash: as it is when it is made only of characters bash does not interpret,
/// else in single quotes.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// sbatch's options for the job array (`--parsable` first: sbatch then prints only the id).
pub fn array_options(s: &Sweep, scripts: &Scripts) -> Vec<String> {
    let mut o = vec![
        "--parsable".to_string(),
        format!("--job-name=hmm-{}", s.name),
        format!("--array=0-{}", s.tasks.max(1) - 1),
        "--ntasks=1".into(),
        format!("--cpus-per-task={}", s.cpus_per_task.max(1)),
        // %a: the array task's index.
        format!("--output={}", scripts.dir.join("shard-%a.out").display()),
        format!("--chdir={}", s.workdir.display()),
    ];
    o.extend(s.partition.as_ref().map(|p| format!("--partition={p}")));
    o
}

/// sbatch's options for the merge job, after the array `array` (`None`: `ARRAY` stands for
/// its id, as the script's header says).
pub fn merge_options(s: &Sweep, scripts: &Scripts, array: Option<u64>) -> Vec<String> {
    let array = array.map_or("ARRAY".to_string(), |a| a.to_string());
    let mut o = vec![
        "--parsable".to_string(),
        format!("--job-name=hmm-{}-merge", s.name),
        format!("--dependency=afterok:{array}"),
        "--kill-on-invalid-dep=yes".into(),
        "--ntasks=1".into(),
        "--cpus-per-task=1".into(),
        format!("--output={}", scripts.merge_log().display()),
        format!("--chdir={}", s.workdir.display()),
    ];
    o.extend(s.partition.as_ref().map(|p| format!("--partition={p}")));
    o
}

/// The command line `args` for bash: each argument quoted, [`SHARD`] replaced by
/// `$SLURM_ARRAY_TASK_ID/tasks`.
fn command_line(xtask: &Path, args: &[String], tasks: u32) -> String {
    let shard = format!("\"$SLURM_ARRAY_TASK_ID/{tasks}\"");
    std::iter::once(sh_quote(&xtask.display().to_string()))
        .chain(args.iter().map(|a| {
            a.split(SHARD)
                .map(|part| if part.is_empty() { String::new() } else { sh_quote(part) })
                .collect::<Vec<_>>()
                .join(&shard)
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The job array's script: shard `$SLURM_ARRAY_TASK_ID` of the sweep.
pub fn array_script(s: &Sweep, scripts: &Scripts) -> String {
    let submit: Vec<String> = array_options(s, scripts).iter().map(|a| sh_quote(a)).collect();
    format!(
        "#!/bin/bash\n\
         # Shard $SLURM_ARRAY_TASK_ID of {tasks} of the sweep {name}, written by `cargo xtask experiment --slurm`.\n\
         # Submitted as: sbatch {submit} {script}\n\
         set -eu\n\
         : \"${{SLURM_ARRAY_TASK_ID:?this script is a Slurm job array task (sbatch --array=0-{last})}}\"\n\
         cd {workdir}\n\
         exec {command}\n",
        tasks = s.tasks,
        name = s.name,
        submit = submit.join(" "),
        script = sh_quote(&scripts.shards.display().to_string()),
        last = s.tasks.max(1) - 1,
        workdir = sh_quote(&s.workdir.display().to_string()),
        command = command_line(&scripts.xtask, &s.shard_args, s.tasks),
    )
}

/// The merge job's script.
pub fn merge_script(s: &Sweep, scripts: &Scripts) -> String {
    let submit: Vec<String> = merge_options(s, scripts, None).iter().map(|a| sh_quote(a)).collect();
    format!(
        "#!/bin/bash\n\
         # The merge of the {tasks} shards of the sweep {name}, written by `cargo xtask experiment --slurm`.\n\
         # Submitted as (ARRAY: the job array's id): sbatch {submit} {script}\n\
         set -eu\n\
         cd {workdir}\n\
         exec {command}\n",
        tasks = s.tasks,
        name = s.name,
        submit = submit.join(" "),
        script = sh_quote(&scripts.merge.display().to_string()),
        workdir = sh_quote(&s.workdir.display().to_string()),
        command = command_line(&scripts.xtask, &s.merge_args, s.tasks),
    )
}

/// Writes the scripts and the copy of the xtask binary into `RUN/slurm/`.
pub fn write(s: &Sweep) -> Result<Scripts, SlurmError> {
    if s.tasks == 0 {
        return Err(SlurmError::Invalid { what: "--tasks takes a positive count".into() });
    }
    for (what, p) in [("run folder", &s.run_dir), ("checkout", &s.workdir)] {
        if !p.is_absolute() {
            return Err(SlurmError::Invalid { what: format!("the {what} {} is not an absolute path", p.display()) });
        }
    }
    if s.run_dir.to_string_lossy().contains('%') {
        // sbatch would read it as a pattern (%a, %j, ...) in the logs' names.
        return Err(SlurmError::Invalid {
            what: format!(
                "the run folder {} has a '%' in its path, which sbatch's --output reads as a pattern",
                s.run_dir.display()
            ),
        });
    }
    let scripts = Scripts::at(&s.run_dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| SlurmError::Io { path, error: e.to_string() }
    };
    std::fs::create_dir_all(&scripts.dir).map_err(io(&scripts.dir))?;
    std::fs::copy(&s.xtask, &scripts.xtask).map_err(|e| SlurmError::Io {
        path: s.xtask.clone(),
        error: format!("copying it to {}: {e}", scripts.xtask.display()),
    })?;
    for (path, text) in [(&scripts.shards, array_script(s, &scripts)), (&scripts.merge, merge_script(s, &scripts))] {
        std::fs::write(path, text).map_err(io(path))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))?;
    }
    Ok(scripts)
}

/// The jobs [`submit`] queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The job array's id.
    pub array: u64,
    /// The merge job's id.
    pub merge: u64,
    /// Its tasks.
    pub tasks: u32,
    /// The scripts and logs.
    pub scripts: Scripts,
}

impl fmt::Display for Submitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "submitted job array {} ({} tasks, one shard each; logs {}) and merge job {} (runs when every task succeeded; log {}); `squeue -j {},{}` shows them",
            self.array,
            self.tasks,
            self.scripts.dir.join("shard-N.out").display(),
            self.merge,
            self.scripts.merge_log().display(),
            self.array,
            self.merge
        )
    }
}

/// The job id in `sbatch --parsable`'s output (`ID` or `ID;CLUSTER`).
pub fn parse_job_id(output: &str) -> Result<u64, SlurmError> {
    output
        .trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| SlurmError::BadJobId { output: output.to_string() })
}

/// Submits the scripts [`write`] wrote: the array, then the merge after it.
pub fn submit(client: &Client, s: &Sweep, scripts: &Scripts) -> Result<Submitted, SlurmError> {
    let mut args = array_options(s, scripts);
    args.push(scripts.shards.display().to_string());
    let array = parse_job_id(&client.run("sbatch", &args)?)?;
    let mut args = merge_options(s, scripts, Some(array));
    args.push(scripts.merge.display().to_string());
    let merge = match client.run("sbatch", &args).and_then(|o| parse_job_id(&o)) {
        Ok(id) => id,
        Err(e) => {
            // No merge: the array's results would wait for a merge nobody runs.
            let _ = client.run("scancel", &[array.to_string()]);
            return Err(e);
        }
    };
    Ok(Submitted { array, merge, tasks: s.tasks, scripts: scripts.clone() })
}

/// One job's (or array task's) state, from `scontrol show job -o` or `sacct`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// The array task's index (`None` for a job that is not an array task, or for the
    /// pending rest of an array, which scontrol shows as one line).
    pub task: Option<u32>,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, ...
    pub state: String,
    /// `ExitCode=` (`status:signal`), where given.
    pub exit: Option<String>,
    /// `Reason=`, where given.
    pub reason: Option<String>,
}

impl JobState {
    /// Whether the job has ended (any state but pending, running, and the states on the way
    /// between).
    pub fn ended(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "STOPPED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESV_DEL_HOLD"
                | "SPECIAL_EXIT"
        )
    }
}

/// The states in `scontrol show job -o`'s output: one line per job or array task, fields
/// `Key=Value` separated by spaces.
pub fn parse_scontrol(output: &str) -> Vec<JobState> {
    output
        .lines()
        .filter(|l| l.contains("JobState="))
        .map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_string)
            };
            JobState {
                task: field("ArrayTaskId").and_then(|t| t.parse().ok()),
                state: field("JobState").unwrap_or_default(),
                exit: field("ExitCode"),
                reason: field("Reason").filter(|r| r != "None"),
            }
        })
        .collect()
}

/// The states in `sacct -n -X -P -o JobID,State,ExitCode`'s output (`ID[_TASK]|STATE|EXIT`;
/// `CANCELLED by 0` is `CANCELLED`).
pub fn parse_sacct(output: &str) -> Vec<JobState> {
    output
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            let id = f.next()?.trim();
            let state = f.next()?.split_whitespace().next()?.to_string();
            let task = id.split_once('_').and_then(|(_, t)| t.parse().ok());
            Some(JobState { task, state, exit: f.next().map(str::to_string), reason: None })
        })
        .collect()
}

/// The states of `job` (one per array task for an array): from slurmctld, or from the
/// accounting database once slurmctld has forgotten it. `Ok(None)`: neither knows it.
pub fn job_states(client: &Client, job: u64) -> Result<Option<Vec<JobState>>, SlurmError> {
    match client.run("scontrol", &["show".into(), "job".into(), "-o".into(), job.to_string()]) {
        Ok(out) => return Ok(Some(parse_scontrol(&out))),
        Err(SlurmError::Command { stderr, .. }) if stderr.contains("Invalid job id") => {}
        Err(e) => return Err(e),
    }
    match client.run(
        "sacct",
        &[
            "-n".into(),
            "-X".into(),
            "-P".into(),
            "-o".into(),
            "JobID,State,ExitCode".into(),
            "-j".into(),
            job.to_string(),
        ],
    ) {
        Ok(out) if !out.trim().is_empty() => Ok(Some(parse_sacct(&out))),
        // No accounting (sacct fails), or no record.
        Ok(_) | Err(SlurmError::Command { .. }) | Err(SlurmError::NotInstalled { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the array's tasks that did not complete say: `shard 1/2 FAILED (exit 2:0), log PATH`.
pub fn failed_shards(sub: &Submitted, states: &[JobState]) -> Vec<String> {
    states
        .iter()
        .filter(|s| s.ended() && s.state != "COMPLETED")
        .map(|s| {
            let exit = s.exit.as_ref().map_or(String::new(), |e| format!(" (exit {e})"));
            match s.task {
                Some(t) => {
                    format!("shard {t}/{} {}{exit}, log {}", sub.tasks, s.state, sub.scripts.shard_log(t).display())
                }
                None => format!("the job array {}{exit}", s.state),
            }
        })
        .collect()
}

/// Waits until the merge job has ended, polling every `poll`, at most `timeout`; `Ok` when it
/// completed. A merge that did not run names the shards that failed and their logs.
pub fn wait(client: &Client, sub: &Submitted, timeout: Duration, poll: Duration) -> Result<(), SlurmError> {
    let t0 = Instant::now();
    let merge = loop {
        match job_states(client, sub.merge)? {
            Some(states) if states.iter().all(JobState::ended) && !states.is_empty() => break states,
            Some(_) => {}
            None => return Err(SlurmError::Lost { job: sub.merge, log: sub.scripts.merge_log() }),
        }
        if t0.elapsed() >= timeout {
            return Err(SlurmError::Timeout { secs: timeout.as_secs(), jobs: vec![sub.array, sub.merge] });
        }
        std::thread::sleep(poll);
    };
    if merge.iter().all(|s| s.state == "COMPLETED") {
        return Ok(());
    }
    let m = &merge[0];
    let shards = job_states(client, sub.array)?.map(|s| failed_shards(sub, &s)).unwrap_or_default();
    let mut what = format!(
        "the merge job {} ended {}{}",
        sub.merge,
        m.state,
        m.reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
    );
    if shards.is_empty() {
        what.push_str(&format!("; its log is {}", sub.scripts.merge_log().display()));
    } else {
        what.push_str(&format!(": {}", shards.join("; ")));
    }
    Err(SlurmError::Failed { what })
}

/// What `cargo xtask experiment FILE --slurm` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--partition P`.
    pub partition: Option<String>,
    /// `--tasks N`: the shards (at most one per point).
    pub tasks: u32,
    /// `--wait`: block until the merge job has ended, at most this long.
    pub wait: Option<Duration>,
}

/// The binary this process runs, to copy or to run again: `/proc/self/exe`, which still opens
/// after cargo has replaced `target/debug/xtask` by a rebuild (`current_exe` then names a path
/// that is gone: `.../xtask (deleted)`); elsewhere `current_exe`.
pub fn running_xtask() -> Result<PathBuf, String> {
    let proc = Path::new("/proc/self/exe");
    if proc.exists() {
        return Ok(proc.to_path_buf());
    }
    std::env::current_exe().map_err(|e| format!("the xtask binary: {e}"))
}

/// `cargo xtask experiment`'s `--slurm` options (flattened into its arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct SlurmArgs {
    /// Submit the sweep to Slurm instead of running it here: a job array of --tasks shards (each `--shard I/N` into one new run folder) and a merge job after them; prints the job ids and the run folder.
    #[arg(long, help_heading = "Slurm", conflicts_with_all = ["shard", "resume", "check", "list"])]
    pub slurm: bool,
    /// The Slurm partition [default: the cluster's default].
    #[arg(long, value_name = "P", requires = "slurm", help_heading = "Slurm")]
    pub partition: Option<String>,
    /// Array tasks, one shard of the points each (at most one per point) [default: 4].
    #[arg(long, value_name = "N", requires = "slurm", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Slurm")]
    pub tasks: Option<u32>,
    /// Wait until the merge job has ended and print its output; fail naming a shard that failed.
    #[arg(long, requires = "slurm", help_heading = "Slurm")]
    pub wait: bool,
    /// With --wait: stop waiting after SECS seconds (the jobs go on) [default: 86400].
    #[arg(long, value_name = "SECS", requires = "wait", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Slurm")]
    pub wait_timeout: Option<u64>,
}

impl SlurmArgs {
    /// The options of a `--slurm` run; `None` without `--slurm`.
    pub fn options(&self) -> Option<Options> {
        self.slurm.then(|| Options {
            partition: self.partition.clone(),
            tasks: self.tasks.unwrap_or(4),
            wait: self.wait.then(|| Duration::from_secs(self.wait_timeout.unwrap_or(86_400))),
        })
    }
}

/// `cargo xtask experiment FILE --slurm`: makes the run folder of the experiment `l` (loaded
/// from `file`) and hands its points to Slurm, `o.tasks` shards each running `--jobs jobs`
/// points at a time (default 1) on as many CPUs, with the per-boot `timeout`. For a sweep in QEMU
/// the kernel is built first, so that each shard's build is only cargo's up-to-date check; with
/// `kernel` (`--kernel ELF`) nothing is built and every shard boots that ELF.
pub fn submit_experiment(
    l: &crate::experiment::Loaded,
    file: &Path,
    host: bool,
    jobs: Option<usize>,
    timeout: u64,
    kernel: Option<&Path>,
    o: &Options,
) -> Result<u8, String> {
    use crate::run::{Invocation, Run};
    let kernel = match ShardKernel::of(host, kernel)? {
        ShardKernel::Build => {
            crate::setup::ensure_prerequisites(l.machine.firmware == "qboot")?;
            crate::setup::build_kernel(crate::setup::Profile::Release)?;
            None
        }
        ShardKernel::Given(k) => Some(k),
        ShardKernel::Host => None,
    };
    let root = crate::root();
    let base = crate::experiment::out_dir(root, l);
    let dir = Run::create(&base, root, file, l, Invocation::now("slurm", root, None), host)?.dir;
    let cpus = u32::try_from(jobs.unwrap_or(1)).unwrap_or(u32::MAX);
    let shard_args = shard_args(&dir, cpus, (!host).then_some(timeout), kernel.as_deref());
    let merge_args = ["experiment", "merge", &dir.display().to_string()].map(String::from).to_vec();
    hand_over(l.exp.name.get_ref(), l.points.len(), &dir, shard_args, merge_args, cpus, o)
}

/// The kernel a `--slurm` sweep's shards boot.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardKernel {
    /// None: the points run on the host (`--host`).
    Host,
    /// The checkout's release build, built before the submission (each shard's build is then
    /// only cargo's up-to-date check).
    Build,
    /// This ELF (`--kernel`), absolute; nothing is built.
    Given(PathBuf),
}

impl ShardKernel {
    /// For a sweep on the host or not, with `--kernel` or not. The given path is made absolute
    /// against the current directory: the shards start in the checkout's root.
    pub fn of(host: bool, kernel: Option<&Path>) -> Result<Self, String> {
        match (host, kernel) {
            (true, _) => Ok(Self::Host),
            (false, None) => Ok(Self::Build),
            (false, Some(k)) => {
                std::path::absolute(k).map(Self::Given).map_err(|e| format!("--kernel {}: {e}", k.display()))
            }
        }
    }
}

/// A shard's arguments to the xtask: resume the run folder `dir` as shard [`SHARD`], `cpus`
/// points at a time; in QEMU guests, `timeout` (the xtask's per-boot timeout, not an option of
/// `--host` runs) and `kernel`, the ELF to boot (absolute: the shards start in the checkout's
/// root) instead of the checkout's build.
pub fn shard_args(dir: &Path, cpus: u32, timeout: Option<u64>, kernel: Option<&Path>) -> Vec<String> {
    let d = dir.display().to_string();
    let mut a: Vec<String> =
        ["experiment", "--resume", &d, "--shard", SHARD, "--jobs", &cpus.to_string()].map(String::from).to_vec();
    if let Some(t) = timeout {
        a.extend(["--timeout".to_string(), t.to_string()]);
    }
    if let Some(k) = kernel {
        a.extend(["--kernel".to_string(), k.display().to_string()]);
    }
    a
}

/// Writes and submits the sweep of `points` points named `name` into the run folder `run_dir`
/// (`shard_args` run one shard into it, with [`SHARD`]; `merge_args` merge them), `cpus` per
/// task. Prints the jobs and where the results will be; with `--wait`, waits for them and
/// prints the merge job's output. Returns the exit code.
pub fn hand_over(
    name: &str,
    points: usize,
    run_dir: &Path,
    shard_args: Vec<String>,
    merge_args: Vec<String>,
    cpus: u32,
    o: &Options,
) -> Result<u8, String> {
    let xtask = running_xtask()?;
    let tasks = o.tasks.min(u32::try_from(points).unwrap_or(u32::MAX)).max(1);
    if tasks < o.tasks {
        eprintln!("xtask: {tasks} tasks, not {}: the experiment has {points} points", o.tasks);
    }
    let s = Sweep {
        name: name.into(),
        run_dir: run_dir.to_path_buf(),
        workdir: crate::root().to_path_buf(),
        xtask,
        shard_args,
        merge_args,
        tasks,
        cpus_per_task: cpus,
        partition: o.partition.clone(),
    };
    let client = Client::default();
    let scripts = write(&s)?;
    let sub = submit(&client, &s, &scripts)?;
    println!("{sub}");
    println!("results in {} (once the merge job {} has run)", run_dir.display(), sub.merge);
    let Some(bound) = o.wait else { return Ok(0) };
    eprintln!("xtask: waiting for jobs {} and {} (at most {} s)", sub.array, sub.merge, bound.as_secs());
    let r = wait(&client, &sub, bound, Duration::from_secs(1));
    // The merge job's output: the tables and the summary a local run prints.
    if let Ok(log) = std::fs::read_to_string(scripts.merge_log()) {
        print!("{log}");
    }
    r?;
    println!("results in {}", run_dir.display());
    Ok(0)
}

#[cfg(test)]
mod tests;
