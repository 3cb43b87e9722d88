//! Running QEMU: one guest boot from launch to decoded exit.
//!
//! Owns the device memory files in `/dev/shm` (made by tempfile: created exclusively, mode
//! 0600, under names with 95 random bits; unlinked as soon as QEMU holds them, at its first output line, and in
//! any case when the run ends, however it ends: a timeout, an error, Ctrl-C or SIGTERM), the
//! QEMU command line beyond the machine's own arguments, the timeout (QEMU is killed when it
//! passes, and dies with the xtask through `PR_SET_PDEATHSIG`), the stop on Ctrl-C or SIGTERM
//! ([`crate::interrupt`]: QEMU killed, the files removed, an error returned), and the
//! decoding of QEMU's exit into an [`Outcome`]: its status, the signal that killed it, and
//! what it said on stderr (which the xtask passes on as it arrives), since QEMU ends with
//! status 0 both when the guest triple-faults under `-no-reboot` and when it is stopped by
//! SIGINT/SIGTERM (`terminating on signal N`) or by gdb's `kill` (`Terminated via GDBstub`).

use crate::Result;
use crate::machine::Machine;
use crate::setup::QEMU;
use boot::protocol::{EXIT_PORT, ExitCode, MARK, Tag};
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// How a QEMU run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The kernel exited with success.
    Success,
    /// The kernel exited reporting a failure.
    Failure,
    /// An in-kernel test crashed.
    TestPanicked,
    /// An in-kernel test overran its watchdog.
    TestHung,
    /// The guest reset (a triple fault, under `-no-reboot`).
    Reset,
    /// QEMU itself failed with this status.
    QemuError(i32),
    /// The xtask's timeout (seconds) passed and it killed QEMU.
    Timeout(u64),
    /// QEMU was killed by this signal, or ended on it (QEMU exits with status 0 after
    /// SIGINT, SIGTERM or SIGHUP, saying `terminating on signal N`).
    Signal(i32),
    /// gdb killed the guest (`kill` in gdb: QEMU says `Terminated via GDBstub` and exits 0).
    GdbKill,
    /// The boot loader gave up before the kernel ran (GRUB: `Failed to boot both default and
    /// fallback entries`), with its error lines; the xtask stopped QEMU then.
    Loader(String),
}

/// What GRUB prints when no menu entry booted; it then waits for a key, so the xtask stops
/// QEMU instead of waiting for its timeout.
/// The `-cpu` model under KVM.
pub const KVM_CPU: &str = "host,-arch-capabilities";

const GRUB_GAVE_UP: &str = "Failed to boot both default and fallback entries";

/// The `error: ...` lines GRUB printed in `lines`, without their terminal escapes, joined
/// (the first is the cause; GRUB's later ones follow from it).
fn grub_error(lines: &[String]) -> String {
    let errors: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.find("error: ").map(|i| l[i..].split('\u{1b}').next().unwrap_or("").trim()))
        .collect();
    if errors.is_empty() { "no error line".into() } else { errors.join(" ") }
}

/// What QEMU says on stderr when a signal stops it (status 0 follows).
const QEMU_SIGNAL: &str = "terminating on signal ";
/// What QEMU says on stderr when gdb kills the guest (status 0 follows).
const QEMU_GDB_KILL: &str = "Terminated via GDBstub";

/// A signal's name.
fn signal_name(n: i32) -> String {
    match n {
        1 => "SIGHUP".into(),
        2 => "SIGINT, Ctrl-C".into(),
        3 => "SIGQUIT".into(),
        6 => "SIGABRT".into(),
        9 => "SIGKILL".into(),
        11 => "SIGSEGV".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

impl Outcome {
    /// Decodes how QEMU ended: its exit status (`None` when a signal killed it), that
    /// signal, and the lines it wrote on stderr. A status 0 is a triple fault (under
    /// `-no-reboot`) unless QEMU said it was stopped by a signal or by gdb.
    pub fn from_exit(code: Option<i32>, signal: Option<i32>, stderr: &[String]) -> Self {
        if code == Some(0) {
            for l in stderr {
                if let Some(n) = l.split(QEMU_SIGNAL).nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok()) {
                    return Self::Signal(n);
                }
                if l.contains(QEMU_GDB_KILL) {
                    return Self::GdbKill;
                }
            }
        }
        match (code, signal) {
            (None, Some(n)) => Self::Signal(n),
            (code, _) => Self::from_status(code),
        }
    }

    /// A reset (QEMU's status 0 under -no-reboot) that followed the kernel's `@@EXIT` line is
    /// that exit: on a machine without `isa-debug-exit` the kernel resets it to leave.
    pub fn or_exit_line(self, lines: &[String]) -> Self {
        if self != Self::Reset {
            return self;
        }
        let code = lines.iter().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(Tag::Exit.payload(l)?).ok()?;
            ExitCode::from_port_value(u32::try_from(v["code"].as_u64()?).ok()?)
        });
        match code {
            Some(c) => Self::from_status(Some(c.qemu_status())),
            None => self,
        }
    }

    /// Decodes QEMU's exit status alone (`None`: killed by a signal, which one unknown).
    pub fn from_status(code: Option<i32>) -> Self {
        match code.map(|c| (c, ExitCode::from_qemu_status(c))) {
            Some((_, Some(ExitCode::Success))) => Self::Success,
            Some((_, Some(ExitCode::Failure))) => Self::Failure,
            Some((_, Some(ExitCode::TestPanicked))) => Self::TestPanicked,
            Some((_, Some(ExitCode::TestHung))) => Self::TestHung,
            Some((0, None)) => Self::Reset,
            Some((c, None)) => Self::QemuError(c),
            None => Self::Signal(0),
        }
    }

    /// One sentence for the user.
    pub fn describe(&self) -> String {
        // The kernel's code reaches the host as QEMU's status through isa-debug-exit, or as
        // the @@EXIT line before a reset where the machine has no such port.
        let code = |c: ExitCode| format!("exit code {:#x}", c.port_value());
        match self {
            Self::Success => format!("the kernel finished successfully ({})", code(ExitCode::Success)),
            Self::Failure => format!("the kernel reported a failure ({}; see the log above)", code(ExitCode::Failure)),
            Self::TestPanicked => format!("an in-kernel test crashed ({})", code(ExitCode::TestPanicked)),
            Self::TestHung => {
                format!("an in-kernel test hung and was stopped by the watchdog ({})", code(ExitCode::TestHung))
            }
            Self::Reset => "the guest reset itself: a triple fault (QEMU status 0 under -no-reboot)".into(),
            Self::QemuError(c) => format!("QEMU failed with status {c} (see its message above)"),
            Self::Timeout(s) => format!(
                "the xtask's timeout of {s} s expired before the kernel finished, so it killed QEMU (the kernel may be hung, or only slow: TCG on a loaded machine is); raise the timeout with --timeout SECS"
            ),
            Self::Signal(0) => "QEMU was killed by a signal".into(),
            Self::Signal(n) => format!("QEMU was stopped by signal {n} ({}), not by the kernel", signal_name(*n)),
            Self::GdbKill => "gdb killed the guest (QEMU: Terminated via GDBstub)".into(),
            Self::Loader(e) => format!("GRUB could not boot the kernel ({e}); the xtask stopped QEMU"),
        }
    }

    /// The xtask's own exit status for this outcome.
    pub fn code(&self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Reset => 3,
            Self::Timeout(_) => 4,
            _ => 1,
        }
    }
}

/// A finished QEMU run.
pub struct Run {
    /// How it ended.
    pub outcome: Outcome,
    /// Every line the guest printed on its serial port.
    pub lines: Vec<String>,
    /// When the boot report arrived, from QEMU's start.
    pub ready_at: Option<Duration>,
}

/// The device memory files, removed when dropped (or at [`ShmFiles::unlink`]).
struct ShmFiles(Vec<tempfile::TempPath>);

impl ShmFiles {
    /// Unlinks the files now (QEMU keeps its open descriptors and mappings): once QEMU holds
    /// them nobody else can open the guest's device memory by name.
    fn unlink(&mut self) {
        for f in self.0.drain(..) {
            let _ = f.close();
        }
    }
}

impl Drop for ShmFiles {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Where the device memory files are made.
const SHM_DIR: &str = "/dev/shm";

/// How many random characters (of 62) a device-memory file's name has: 95 bits.
const NAME_RANDOM: usize = 16;

/// Creates one device-memory file in `dir` through tempfile: `hmmk-`, `random` random
/// characters, then `-NAME` (the machine's name for it, [`Machine::shm_files`]); exclusively
/// (`O_EXCL`: a file or symlink already at a name, planted or stale, is never followed or
/// reused: tempfile tries another name, or with no random characters fails), readable by this
/// user only, and `size` bytes long. It is removed when the returned path is dropped.
fn create_device_file(dir: &Path, name: &str, size: u64, random: usize) -> Result<tempfile::TempPath> {
    use std::os::unix::fs::PermissionsExt;
    // tempfile's names come from fastrand's thread-local generator, which seeds itself from the
    // time and thread; seeded here from the OS so that no other local user can guess (and plant)
    // the names in advance.
    if let Ok(seed) = getrandom::u64() {
        fastrand::seed(seed);
    }
    let suffix = format!("-{name}");
    let f = tempfile::Builder::new()
        .prefix("hmmk-")
        .suffix(&suffix)
        .rand_bytes(random)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| format!("creating device memory {name} in {}: {e}", dir.display()))?;
    f.as_file().set_len(size).map_err(|e| format!("sizing device memory {}: {e}", f.path().display()))?;
    Ok(f.into_temp_path())
}

/// Carries out a guest's `@@HOST` request (`payload`) on `machine` over the QMP socket in
/// `dir`, connecting on the first one.
fn host_request(
    payload: &str,
    machine: &Machine,
    dir: Option<&tempfile::TempDir>,
    qmp: &mut Option<crate::qmp::Qmp>,
) -> Result<()> {
    let req = crate::qmp::parse_request(payload)?;
    let (path, property, value) = crate::qmp::resolve(machine, req)?;
    let dir = dir.ok_or("a @@HOST request on a machine without hot-plug memory (no QMP socket)")?;
    if qmp.is_none() {
        *qmp = Some(crate::qmp::Qmp::connect(&dir.path().join("qmp"))?);
    }
    let q = qmp.as_mut().ok_or("no QMP connection")?;
    q.qom_set(&path, property, serde_json::json!(value)).map_err(|e| format!("{req}: {e}"))
}

/// What the terminal shows of a guest line: nothing for a machine-readable line, a short
/// decoded message for one that a log line ran into ([`crate::decode::brief`]), else the line.
pub fn echo(line: &str) -> Option<String> {
    if line.starts_with(MARK) {
        return None;
    }
    if Tag::ALL.iter().any(|t| line.contains(t.prefix())) {
        return Some(crate::decode::brief(line));
    }
    Some(line.to_string())
}

/// The xtask's timeout of a guest: it expires `timeout` after the start, or after the last
/// line tagged `restart_on`.
#[derive(Debug, Clone, Copy)]
struct Watchdog {
    timeout: Duration,
    restart_on: Option<Tag>,
    deadline: Instant,
}

impl Watchdog {
    fn new(start: Instant, timeout: Duration, restart_on: Option<Tag>) -> Watchdog {
        Watchdog { timeout, restart_on, deadline: start + timeout }
    }

    /// A guest line arrived at `now`.
    fn saw(&mut self, line: &str, now: Instant) {
        if self.restart_on.is_some_and(|t| t.payload(line).is_some()) {
            self.deadline = now + self.timeout;
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Time left at `now`.
    fn left(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// What to boot, on which machine, and how.
pub struct Launch<'a> {
    /// The kernel ELF.
    pub kernel: &'a Path,
    /// The machine file.
    pub machine: &'a Machine,
    /// The kernel command line (the machine's own arguments are appended).
    pub cmdline: String,
    /// `tcg` or `kvm`.
    pub accel: &'a str,
    /// QEMU waits for gdb on :1234 (no timeout then).
    pub gdb: bool,
    /// QEMU is killed after this (from the start, or from the last `restart_on` line).
    pub timeout: Duration,
    /// A line with this tag starts the timeout again (a guest that keeps finishing points is
    /// not hung); `None`: the timeout counts from the start.
    pub restart_on: Option<Tag>,
    /// Print the guest's non-`@@` lines as they arrive.
    pub echo: bool,
    /// A boot module (`-initrd`): the experiment image.
    pub initrd: Option<&'a Path>,
    /// Called with every line as it arrives (progress).
    pub on_line: Option<&'a (dyn Fn(&str) + Sync)>,
    /// How the kernel is started.
    pub boot: Boot<'a>,
}

impl<'a> Launch<'a> {
    /// A PVH boot of `kernel` on `machine` under TCG with `cmdline`, killed after `timeout`:
    /// no gdb, nothing echoed, no boot module, no line callback (a caller sets what differs).
    pub fn new(kernel: &'a Path, machine: &'a Machine, cmdline: String, timeout: Duration) -> Launch<'a> {
        Launch {
            kernel,
            machine,
            cmdline,
            accel: "tcg",
            gdb: false,
            timeout,
            restart_on: None,
            echo: false,
            initrd: None,
            on_line: None,
            boot: Boot::Pvh,
        }
    }
}

/// How a guest's kernel is started.
#[derive(Debug, Clone, Copy)]
pub enum Boot<'a> {
    /// By PVH: QEMU loads [`Launch::kernel`] itself (`-kernel`, `-append`, `-initrd`), under
    /// the machine's firmware.
    Pvh,
    /// Through GRUB from an ISO ([`crate::grub::make_iso`], which holds the kernel and its
    /// command line), under SeaBIOS or OVMF; the machine's own firmware choice is ignored.
    Grub {
        /// The ISO.
        iso: &'a Path,
        /// The firmware.
        firmware: crate::grub::Firmware,
    },
}

/// QEMU's arguments for `--gdb`: the gdb stub on localhost only, as [`gdb_message`] says (`-s`
/// listens on every interface), and the guest stopped before its first instruction.
pub const GDB_ARGS: [&str; 3] = ["-gdb", "tcp:127.0.0.1:1234", "-S"];

/// What `--gdb` tells the user: where the stub listens and how to attach to it.
pub fn gdb_message(kernel: &Path) -> String {
    format!("xtask: QEMU waits for gdb on localhost:1234 (gdb {} -ex 'target remote :1234')", kernel.display())
}

/// Boots `l` in QEMU, with its device memory files created (and removed after), under the
/// timeout, and collects the guest's lines. Ctrl-C or SIGTERM kills QEMU and returns an error
/// ([`crate::interrupt::requested`] then says which signal).
pub fn run_qemu(l: &Launch<'_>) -> Result<Run> {
    crate::interrupt::install();
    run_program(Path::new(QEMU), l, &|| crate::interrupt::requested().is_some())
}

/// [`run_qemu`] with `program` as QEMU, stopping when `stop` says so.
fn run_program(program: &Path, l: &Launch<'_>, stop: &dyn Fn() -> bool) -> Result<Run> {
    // Each file has its own random name, so experiments running several guests at once from
    // one process never share (and overwrite each other's) device memory.
    let mut guard = ShmFiles(Vec::new());
    let mut paths = std::collections::HashMap::new();
    for (name, size) in l.machine.shm_files() {
        let file = create_device_file(Path::new(SHM_DIR), &name, size, NAME_RANDOM)?;
        paths.insert(name, file.display().to_string());
        guard.0.push(file);
    }
    let mut cmd = Command::new(program);
    // A machine with hot-plug memory gets a QMP socket, in a directory of its own (mode 0700),
    // for the guest's `@@HOST` requests.
    let qmp_dir = if l.machine.devices.iter().any(|d| d.hotplug_bytes() > 0) {
        let d = tempfile::Builder::new().prefix("hmmk-qmp-").tempdir().map_err(|e| format!("QMP directory: {e}"))?;
        cmd.args(["-qmp", &format!("unix:{},server=on,wait=off", d.path().join("qmp").display())]);
        Some(d)
    } else {
        None
    };
    let mut qmp: Option<crate::qmp::Qmp> = None;
    let mut machine_args = l.machine.qemu_args(&|name| paths[name].clone());
    match l.boot {
        Boot::Pvh => {
            cmd.args(machine_args)
                .arg("-kernel")
                .arg(l.kernel)
                .args(["-append", &format!("{}{}", l.cmdline, l.machine.kernel_args())])
                .args(l.initrd.iter().flat_map(|p| [std::ffi::OsStr::new("-initrd"), p.as_os_str()]));
        }
        Boot::Grub { iso, firmware } => {
            if l.initrd.is_some() {
                return Err("a GRUB boot carries no boot module (the ISO holds only the kernel)".into());
            }
            // GRUB needs a PC BIOS or UEFI, not the machine's qboot.
            if let Some(i) = machine_args.iter().position(|a| a == "-bios") {
                machine_args.drain(i..(i + 2).min(machine_args.len()));
            }
            cmd.args(machine_args).args(crate::grub::qemu_args(iso, firmware)?);
        }
    }
    // TCG emulates everything "max" offers; under KVM the host's CPU is what users want,
    // without IA32_ARCH_CAPABILITIES: nested KVM backends (the build machines') refuse QEMU's
    // write of that MSR and QEMU aborts, and the kernel never reads it.
    cmd.args(["-cpu", if l.accel == "kvm" { KVM_CPU } else { "max" }, "-accel", l.accel])
        .args(["-display", "none", "-serial", "stdio", "-vga", "none", "-nic", "none", "-monitor", "none"])
        .args(["-no-reboot", "-nodefaults"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if l.machine.debug_exit {
        cmd.args(["-device", &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04")]);
    }
    if l.gdb {
        cmd.args(GDB_ARGS);
        eprintln!("{}", gdb_message(l.kernel));
    }
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and calls only the
        // async-signal-safe prctl.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", program.display()))?;
    let stdout = child.stdout.take().ok_or("no QEMU stdout")?;
    let stderr = child.stderr.take().ok_or("no QEMU stderr")?;
    // QEMU's own messages go on to the terminal as they come; the ones that say how it ended
    // are kept for the outcome.
    let said = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if line.contains(QEMU_SIGNAL) || line.contains(QEMU_GDB_KILL) {
                kept.push(line);
            }
        }
        kept
    });
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut ready_at = None;
    let mut watchdog = Watchdog::new(start, l.timeout, l.restart_on);
    let mut timed_out = false;
    let mut loader = None;
    loop {
        if stop() {
            let _ = child.kill();
            let _ = child.wait();
            guard.unlink();
            return Err(match crate::interrupt::requested() {
                Some(sig) => format!(
                    "interrupted by {}: QEMU stopped and its device-memory files removed",
                    crate::interrupt::name(sig)
                ),
                None => "stopped: QEMU killed and its device-memory files removed".into(),
            });
        }
        let now = Instant::now();
        if watchdog.expired(now) && !l.gdb {
            timed_out = true;
            let _ = child.kill();
            break;
        }
        match rx.recv_timeout(watchdog.left(now).min(Duration::from_millis(200))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                if let Some(f) = l.on_line {
                    f(&line);
                }
                watchdog.saw(&line, Instant::now());
                if Tag::Boot.payload(&line).is_some() && ready_at.is_none() {
                    ready_at = Some(start.elapsed());
                }
                // QEMU opened every backing file before the guest ran its first instruction.
                guard.unlink();
                if l.echo
                    && let Some(t) = echo(&line)
                {
                    println!("{t}");
                }
                let host = Tag::Host.payload(&line).map(|p| host_request(p, l.machine, qmp_dir.as_ref(), &mut qmp));
                let gave_up = line.contains(GRUB_GAVE_UP);
                lines.push(line);
                if let Some(Err(e)) = host {
                    // The guest waits (bounded) for the effect and fails naming what it
                    // missed; this says why.
                    eprintln!("xtask: {e}");
                    lines.push(format!("[xtask] {e}"));
                }
                if gave_up {
                    loader = Some(grub_error(&lines));
                    let _ = child.kill();
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    // Drain what is left.
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                        // QEMU opened every backing file before the guest ran its first instruction.
                        guard.unlink();
                        if l.echo
                            && let Some(t) = echo(&line)
                        {
                            println!("{t}");
                        }
                        lines.push(line);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    let said = said.join().unwrap_or_default();
    let outcome = if let Some(e) = loader {
        Outcome::Loader(e)
    } else if timed_out {
        Outcome::Timeout(l.timeout.as_secs())
    } else {
        use std::os::unix::process::ExitStatusExt;
        Outcome::from_exit(status.code(), status.signal(), &said).or_exit_line(&lines)
    };
    Ok(Run { outcome, lines, ready_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reset after the kernel's `@@EXIT` line is the exit it names; a reset without one is
    /// still a reset (a triple fault), and other outcomes stand whatever was printed.
    #[test]
    fn a_reset_after_the_exit_line_is_that_exit() {
        let lines = |code: u32| vec!["[ 0.1 cpu0 INFO kernel] done".to_string(), format!("@@EXIT {{\"code\":{code}}}")];
        let ok = ExitCode::Success.port_value();
        assert_eq!(Outcome::Reset.or_exit_line(&lines(ok)), Outcome::Success);
        assert_eq!(Outcome::Reset.or_exit_line(&lines(ExitCode::Failure.port_value())), Outcome::Failure);
        assert_eq!(Outcome::Reset.or_exit_line(&lines(7)), Outcome::Reset, "not a code the kernel uses");
        assert_eq!(Outcome::Reset.or_exit_line(&[]), Outcome::Reset);
        assert_eq!(Outcome::Timeout(5).or_exit_line(&lines(ok)), Outcome::Timeout(5));
        assert_eq!(Outcome::Failure.or_exit_line(&lines(ok)), Outcome::Failure);
    }

    /// GRUB's errors are what the outcome names, without the terminal's escapes (lines
    /// as QEMU's serial gave them under OVMF when the load failed).
    #[test]
    fn grub_giving_up_names_its_errors() {
        let lines: Vec<String> = [
            "\u{1b}[0m\u{1b}[37m\u{1b}[40m\u{1b}[H\u{1b}[J  Booting `hmm-unikernel'",
            "error: failure reading sector 0x2860 from `cd0'.",
            "error: you need to load the kernel first.\u{1b}[0m",
            "",
            "  Failed to boot both default and fallback entries.",
        ]
        .map(String::from)
        .to_vec();
        assert!(lines[4].contains(GRUB_GAVE_UP));
        assert_eq!(
            grub_error(&lines),
            "error: failure reading sector 0x2860 from `cd0'. error: you need to load the kernel first."
        );
        assert_eq!(grub_error(&lines[..2]), "error: failure reading sector 0x2860 from `cd0'.");
        assert_eq!(grub_error(&[]), "no error line");
        let d = Outcome::Loader(grub_error(&lines)).describe();
        assert!(d.starts_with("GRUB could not boot the kernel (error: failure reading sector"), "{d}");
    }

    #[test]
    fn device_memory_files_are_private_exclusive_and_unguessable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            create_device_file(dir.path(), "0-dev0", 4096, NAME_RANDOM).unwrap(),
            create_device_file(dir.path(), "0-dev0", 4096, NAME_RANDOM).unwrap(),
        );
        assert_ne!(a.to_path_buf(), b.to_path_buf(), "two launches' names must differ for the same device");
        let path = create_device_file(dir.path(), "dev0", 1 << 20, 0).unwrap();
        assert_eq!(path.to_path_buf(), dir.path().join("hmmk--dev0"));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 1 << 20);
        // A file already there (planted, or left behind) is refused, not reused.
        let e = create_device_file(dir.path(), "dev0", 1 << 20, 0).unwrap_err();
        assert!(e.contains("creating device memory dev0") && e.contains("exists"), "{e}");
        let kept = path.to_path_buf();
        let mut g = ShmFiles(vec![path, a, b]);
        g.unlink();
        assert!(!kept.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "every file unlinked");
    }

    /// A guest that keeps finishing points is not killed: each point's line starts the timeout
    /// again; other lines do not, and without `restart_on` it counts from the start.
    #[test]
    fn the_timeout_restarts_at_each_point() {
        let (t0, s) = (Instant::now(), Duration::from_secs);
        let point = Tag::Point.line("{\"id\":3}").to_string();
        let mut w = Watchdog::new(t0, s(10), Some(Tag::Point));
        w.saw("dev0: a warning", t0 + s(8));
        assert!(!w.expired(t0 + s(9)) && w.expired(t0 + s(10)));
        w.saw(&point, t0 + s(9));
        assert!(!w.expired(t0 + s(18)) && w.expired(t0 + s(19)));
        assert_eq!(w.left(t0 + s(15)), s(4));
        let mut fixed = Watchdog::new(t0, s(10), None);
        fixed.saw(&point, t0 + s(9));
        assert!(fixed.expired(t0 + s(10)) && fixed.left(t0 + s(11)) == Duration::ZERO);
    }

    #[test]
    fn the_kernels_exit_codes_are_decoded() {
        let want = [Outcome::Success, Outcome::Failure, Outcome::TestPanicked, Outcome::TestHung];
        for (code, want) in ExitCode::ALL.into_iter().zip(want) {
            assert_eq!(Outcome::from_status(Some(code.qemu_status())), want);
            assert!(want.describe().contains(&format!("exit code {:#x}", code.port_value())), "{}", want.describe());
        }
        assert_eq!(Outcome::from_status(Some(0)), Outcome::Reset);
        assert_eq!(Outcome::from_status(Some(1)), Outcome::QemuError(1));
        assert_eq!(Outcome::from_status(None), Outcome::Signal(0));
    }
}

#[cfg(test)]
mod messages_tests;
#[cfg(test)]
mod shm_tests;
