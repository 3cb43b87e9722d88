//! A single-node Slurm cluster on this machine, for the sweep test ([`super::check`]).
//!
//! Debian's `slurm-wlm` and `munge` (installed with apt-get when missing and running as root, as
//! `.ci/run` does on a fresh CI machine), started without systemd, everything under one
//! directory of its own, so it touches nothing of the machine's and several can run at once:
//!
//! - `munged` (foreground, `--force`: it runs as root) with a fresh 1 KiB key (mode 0600) and its
//!   socket in the directory (munge authenticates every Slurm message);
//! - a `slurm.conf` naming that socket (`AuthInfo=socket=`), free ports on 127.0.0.1, one node
//!   `localhost` with the CPUs, sockets, cores and memory `slurmd -C` finds, one partition
//!   ([`PARTITION`]), `proctrack/linuxproc` and `task/none` (no cgroups, which a container may
//!   not have), `select/cons_tres`, no accounting, state and spool directories in the directory;
//! - `slurmctld -D` and `slurmd -D -N localhost` (foreground, as children of the xtask, so they
//!   die with it: `PR_SET_PDEATHSIG`).
//!
//! [`Cluster::start`] returns once `sinfo` shows the node idle; dropping the [`Cluster`] cancels
//! its jobs, stops the daemons (SIGTERM, then SIGKILL after a bounded wait) and removes the
//! directory. Its [`Client`] runs Slurm's commands on it (`SLURM_CONF`); so do the jobs, which
//! inherit sbatch's environment.

use super::Client;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cluster's one partition.
pub const PARTITION: &str = "debug";

/// The programs the cluster needs (daemons in `/usr/sbin`, clients in `/usr/bin`).
pub const TOOLS: [&str; 9] =
    ["munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo"];

/// The Debian packages that bring [`TOOLS`].
pub const PACKAGES: [&str; 2] = ["slurm-wlm", "munge"];

/// Why the cluster could not be had.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterError {
    /// Slurm or munge is not installed and cannot be installed here.
    NotInstalled {
        /// The programs missing.
        missing: Vec<String>,
        /// Why they were not installed.
        why: String,
    },
    /// A file or directory of the cluster.
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: String,
    },
    /// A daemon or command did not start, or exited.
    Daemon {
        /// Which.
        name: String,
        /// What happened.
        error: String,
        /// The end of its log.
        log: String,
    },
    /// The node did not become idle in time.
    NotReady {
        /// The bound in seconds.
        secs: u64,
        /// What `sinfo` said last.
        sinfo: String,
        /// The end of the daemons' logs.
        log: String,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled { missing, why } => write!(
                f,
                "Slurm is not installed ({} missing) and {why}; install it with: apt-get install -y {}",
                missing.join(", "),
                PACKAGES.join(" ")
            ),
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Daemon { name, error, log } => write!(f, "{name}: {error}; its log ends:\n{log}"),
            Self::NotReady { secs, sinfo, log } => write!(
                f,
                "the node localhost was not idle within {secs} s (sinfo: {}); the daemons' logs end:\n{log}",
                sinfo.trim()
            ),
        }
    }
}

impl From<ClusterError> for String {
    fn from(e: ClusterError) -> Self {
        e.to_string()
    }
}

/// Where `tool` is: on `PATH`, or in `/usr/sbin` / `/usr/bin` (a PATH without sbin).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The [`TOOLS`] not installed.
pub fn missing_tools() -> Vec<String> {
    TOOLS.iter().filter(|t| find_tool(t).is_none()).map(|t| t.to_string()).collect()
}

/// Installs [`PACKAGES`] with apt-get when a tool is missing and this runs as root; else says
/// why it cannot.
pub fn ensure_installed() -> Result<(), ClusterError> {
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        let why = if root { "this machine has no apt-get" } else { "this does not run as root" };
        return Err(ClusterError::NotInstalled { missing, why: why.into() });
    }
    eprintln!("xtask: installing Slurm (apt-get install -y {})", PACKAGES.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(PACKAGES);
    if !(apt(&["update", "-qq"]) && apt(&install)) {
        return Err(ClusterError::NotInstalled { missing, why: "apt-get failed (see above)".into() });
    }
    let missing = missing_tools();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::NotInstalled { missing, why: "apt-get installed the packages without them".into() })
    }
}

/// The node's `NodeName=` line for `slurm.conf` from `slurmd -C`'s first line (the machine's
/// CPUs, sockets, cores, threads and memory): named `localhost` at 127.0.0.1, whatever the
/// machine's host name.
pub fn node_line(slurmd_c: &str) -> Option<String> {
    let line = slurmd_c.lines().find(|l| l.starts_with("NodeName="))?;
    let rest: Vec<&str> = line.split_whitespace().filter(|f| !f.starts_with("NodeName=")).collect();
    if !rest.iter().any(|f| f.starts_with("CPUs=")) {
        return None;
    }
    Some(format!("NodeName=localhost NodeAddr=127.0.0.1 {} State=UNKNOWN", rest.join(" ")))
}

/// The cluster's `slurm.conf`: everything under `dir`, ports `ports` (slurmctld's, slurmd's).
pub fn slurm_conf(dir: &Path, node: &str, ports: (u16, u16)) -> String {
    let d = dir.display();
    format!(
        "# A single-node cluster for the sweep test (xtask/src/slurm/cluster.rs); nothing outside {d}.\n\
         ClusterName=hmmtest\n\
         SlurmctldHost=localhost(127.0.0.1)\n\
         SlurmctldPort={ctld}\n\
         SlurmdPort={slurmd}\n\
         SlurmUser=root\n\
         SlurmdUser=root\n\
         AuthType=auth/munge\n\
         CredType=cred/munge\n\
         AuthInfo=socket={d}/munge/munge.socket\n\
         StateSaveLocation={d}/state\n\
         SlurmdSpoolDir={d}/spool\n\
         SlurmctldPidFile={d}/slurmctld.pid\n\
         SlurmdPidFile={d}/slurmd.pid\n\
         SlurmctldLogFile={d}/log/slurmctld.log\n\
         SlurmdLogFile={d}/log/slurmd.log\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         JobCompType=jobcomp/none\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core\n\
         SchedulerType=sched/backfill\n\
         MpiDefault=none\n\
         ReturnToService=2\n\
         # Ended jobs stay visible to scontrol for 10 minutes (there is no accounting database).\n\
         MinJobAge=600\n\
         {node}\n\
         PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
        ctld = ports.0,
        slurmd = ports.1,
    )
}

/// Two free TCP ports on 127.0.0.1 (the kernel's choice; free when asked).
fn free_ports() -> Result<(u16, u16), ClusterError> {
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::Io {
            path: PathBuf::from("127.0.0.1:0"),
            error: format!("binding a free port: {e}"),
        })
    };
    let (a, b) = (bind()?, bind()?);
    let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
    Ok((port(&a), port(&b)))
}

/// A daemon of the cluster.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// The last `n` lines of `path`.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {l}\n")).collect()
}

/// A running single-node cluster; dropping it stops it.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<Daemon>,
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd with everything under `dir` (created; removed
    /// when the cluster is dropped), and waits until the node is idle.
    pub fn start(dir: &Path) -> Result<Self, ClusterError> {
        ensure_installed()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| ClusterError::Io { path, error: e.to_string() }
        };
        let _ = std::fs::remove_dir_all(dir);
        for sub in ["munge", "key", "state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir.join(sub)))?;
        }
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // munged checks that its key is its user's alone, and that the socket's directory lets
        // clients in.
        let perm = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p));
        perm(dir, 0o755)?;
        perm(&dir.join("munge"), 0o755)?;
        perm(&dir.join("key"), 0o700)?;
        let key = dir.join("key/munge.key");
        let mut bytes = vec![0u8; 1024];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(io(Path::new("/dev/urandom")))?;
        }
        {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key)
                .and_then(|mut f| f.write_all(&bytes))
                .map_err(io(&key))?;
        }
        let mut cluster = Self { dir: dir.to_path_buf(), conf: dir.join("slurm.conf"), daemons: Vec::new() };
        let socket = dir.join("munge/munge.socket");
        cluster.spawn(
            "munged",
            &[
                "--foreground".into(),
                "--force".into(),
                format!("--key-file={}", key.display()),
                format!("--socket={}", socket.display()),
                format!("--pid-file={}", dir.join("munge/munged.pid").display()),
                format!("--log-file={}", dir.join("log/munged.log").display()),
                format!("--seed-file={}", dir.join("munge/munged.seed").display()),
            ],
            dir.join("log/munged.log"),
        )?;
        cluster.until("munged", Duration::from_secs(20), || {
            Command::new(find_tool("munge").unwrap_or_else(|| "munge".into()))
                .args(["-n", "-S"])
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then_some(())
                .ok_or_else(|| "munge -n cannot reach munged yet".to_string())
        })?;
        let slurmd = find_tool("slurmd").unwrap_or_else(|| "slurmd".into());
        let out = Command::new(&slurmd).arg("-C").output().map_err(|e| ClusterError::Daemon {
            name: "slurmd -C".into(),
            error: e.to_string(),
            log: String::new(),
        })?;
        let found = String::from_utf8_lossy(&out.stdout).into_owned();
        let node = node_line(&found).ok_or_else(|| ClusterError::Daemon {
            name: "slurmd -C".into(),
            error: format!("printed no NodeName= line with CPUs=: {found:?}"),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        })?;
        std::fs::write(&cluster.conf, slurm_conf(dir, &node, free_ports()?)).map_err(io(&cluster.conf))?;
        let conf = cluster.conf.display().to_string();
        cluster.spawn("slurmctld", &["-D".into(), "-f".into(), conf.clone()], dir.join("log/slurmctld.log"))?;
        cluster.spawn(
            "slurmd",
            &["-D".into(), "-N".into(), "localhost".into(), "-f".into(), conf],
            dir.join("log/slurmd.log"),
        )?;
        let client = cluster.client();
        let bound = Duration::from_secs(60);
        cluster
            .until("the node", bound, || {
                let out = client.run("sinfo", &["-h".into(), "-N".into(), "-o".into(), "%T".into()]);
                match out {
                    Ok(s) if s.trim() == "idle" => Ok(()),
                    Ok(s) => Err(s),
                    Err(e) => Err(e.to_string()),
                }
            })
            .map_err(|e| match e {
                ClusterError::Daemon { name, error, log } if name == "the node" => {
                    ClusterError::NotReady { secs: bound.as_secs(), sinfo: error, log }
                }
                e => e,
            })?;
        Ok(cluster)
    }

    /// Starts `name` with `args` (stdout and stderr to `dir/log/NAME.out`; `log`: the log file
    /// its options name), to die with the xtask.
    fn spawn(&mut self, name: &'static str, args: &[String], log: PathBuf) -> Result<(), ClusterError> {
        let exe = find_tool(name).ok_or_else(|| ClusterError::NotInstalled {
            missing: vec![name.into()],
            why: "it is not on PATH nor in /usr/sbin".into(),
        })?;
        let out_path = self.dir.join(format!("log/{name}.out"));
        let out = std::fs::File::create(&out_path)
            .map_err(|e| ClusterError::Io { path: out_path.clone(), error: e.to_string() })?;
        let err = out.try_clone().map_err(|e| ClusterError::Io { path: out_path.clone(), error: e.to_string() })?;
        let mut cmd = Command::new(exe);
        cmd.args(args).env("SLURM_CONF", &self.conf).stdin(Stdio::null()).stdout(out).stderr(err);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the child between fork and exec and calls only the
            // async-signal-safe prctl.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|e| ClusterError::Daemon {
            name: name.into(),
            error: format!("cannot start: {e}"),
            log: String::new(),
        })?;
        self.daemons.push(Daemon { name, child, log });
        Ok(())
    }

    /// Polls `ready` every 200 ms until it holds, a daemon exits, or `bound` passes
    /// (`ClusterError::Daemon` named `what`, with `ready`'s last answer).
    fn until(
        &mut self,
        what: &str,
        bound: Duration,
        mut ready: impl FnMut() -> Result<(), String>,
    ) -> Result<(), ClusterError> {
        let t0 = Instant::now();
        loop {
            let last = match ready() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            for d in &mut self.daemons {
                if let Ok(Some(status)) = d.child.try_wait() {
                    let out = self.dir.join(format!("log/{}.out", d.name));
                    return Err(ClusterError::Daemon {
                        name: d.name.into(),
                        error: format!("exited ({status})"),
                        log: format!("{}{}", tail(&d.log, 15), tail(&out, 15)),
                    });
                }
            }
            if t0.elapsed() >= bound {
                let log = self.daemons.iter().map(|d| format!("{}:\n{}", d.name, tail(&d.log, 10))).collect();
                return Err(ClusterError::Daemon {
                    name: what.into(),
                    error: format!("not ready within {} s: {last}", bound.as_secs()),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A client of this cluster.
    pub fn client(&self) -> Client {
        Client { conf: Some(self.conf.clone()) }
    }

    /// Its `slurm.conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The end of every daemon's log (for a failure's message).
    pub fn logs(&self) -> String {
        self.daemons.iter().map(|d| format!("{}:\n{}", d.name, tail(&d.log, 20))).collect()
    }

    /// Cancels every job, waits (at most 20 s) until they are gone, and stops the daemons:
    /// slurmd, slurmctld, munged, each by SIGTERM and, after 10 s, SIGKILL.
    fn stop(&mut self) {
        let client = self.client();
        if self.daemons.iter().any(|d| d.name == "slurmctld") {
            let ids = client.run("squeue", &["-h".into(), "-o".into(), "%A".into()]).unwrap_or_default();
            let ids: Vec<String> = ids.split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                let _ = client.run("scancel", &ids);
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(20)
                    && client
                        .run("squeue", &["-h".into(), "-o".into(), "%A".into()])
                        .is_ok_and(|s| !s.trim().is_empty())
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        // The reverse of the start: slurmd, slurmctld, munged.
        while let Some(mut d) = self.daemons.pop() {
            let pid = d.child.id() as libc::pid_t;
            // SAFETY: kill has no memory preconditions; pid is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let t0 = Instant::now();
            while d.child.try_wait().is_ok_and(|s| s.is_none()) {
                if t0.elapsed() >= Duration::from_secs(10) {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
