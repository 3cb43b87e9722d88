//! The device-memory files: unguessable, private, never following a planted name, held by QEMU
//! only once it has them open, and gone after a run and after a stop. A shell script stands
//! in for QEMU: it opens the `mem-path=` files as QEMU does and reports what it sees.

use super::*;
use crate::machine::Machine;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A scratch folder, removed when dropped.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("xtask-shm-{name}-")).tempdir().unwrap()
}

/// A fake QEMU: writes the device-memory paths it was given (one per line) to `seen`, each
/// with whether it existed, opens them all, then runs `then`.
fn fake_qemu(dir: &Path, then: &str) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
n=2
for a in "$@"; do
  case "$a" in
    *mem-path=*)
      p=${{a#*mem-path=}}; p=${{p%%,*}}; n=$((n+1)); last=$p
      if [ -e "$p" ]; then echo "$p exists" >> {seen}; else echo "$p missing" >> {seen}; fi
      eval "exec $n<\"\$p\"" ;;
  esac
done
touch {started}
{then}
"#,
        seen = dir.join("seen").display(),
        started = dir.join("started").display(),
    );
    let p = dir.join("qemu");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    p
}

fn machine() -> Machine {
    Machine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/default.toml")).unwrap()
}

fn launch<'a>(m: &'a Machine, kernel: &'a Path) -> Launch<'a> {
    Launch::new(kernel, m, String::new(), Duration::from_secs(60))
}

/// The paths the fake QEMU was given, each with whether it existed when QEMU started.
fn seen(dir: &Path) -> Vec<(String, bool)> {
    std::fs::read_to_string(dir.join("seen"))
        .unwrap()
        .lines()
        .map(|l| {
            let (p, s) = l.rsplit_once(' ').unwrap();
            (p.to_string(), s == "exists")
        })
        .collect()
}

#[test]
fn device_files_are_unlinked_once_qemu_holds_them_and_gone_after_the_run() {
    let scratch = scratch("run");
    let dir = scratch.path();
    // After its first line, QEMU waits (at most 20 s) for its files to be unlinked, then
    // counts the deleted files it still holds open.
    let qemu = fake_qemu(
        dir,
        r#"echo "opened"
i=0; while [ -e "$last" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
if [ -e "$last" ]; then echo "still there"; else echo "unlinked"; fi
echo "held $(ls -l /proc/$$/fd | grep -c '(deleted)')"
exit 0"#,
    );
    let m = machine();
    let run = run_program(&qemu, &launch(&m, Path::new("/nonexistent-kernel")), &|| false).unwrap();
    let files = seen(dir);
    // qemu/default.toml: dev0 with its hot-plug region, dev1.
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|f| f.1), "every file existed when QEMU started: {files:?}");
    let names: Vec<&str> = files.iter().map(|f| f.0.rsplit_once('/').unwrap().1).collect();
    for (n, suffix) in names.iter().zip(["-0-dev0", "-0-dev0-hot", "-1-dev1"]) {
        assert!(n.starts_with("hmmk-") && n.ends_with(suffix), "{n} is not hmmk-RANDOM{suffix}");
    }
    assert_eq!(run.lines, ["opened", "unlinked", "held 3"], "QEMU kept its open files after the unlink");
    for (p, _) in &files {
        assert!(!Path::new(p).exists(), "{p} left behind after the run");
        assert!(p.starts_with("/dev/shm/hmmk-"), "{p}");
    }
}

#[test]
fn a_stop_kills_qemu_and_removes_the_files_it_had_not_opened_yet() {
    let scratch = scratch("stop");
    let dir = scratch.path();
    // QEMU that never prints a line (so nothing unlinks the files early) and never exits.
    let qemu = fake_qemu(dir, "exec sleep 600");
    let m = machine();
    let started = dir.join("started");
    let t0 = Instant::now();
    // The stop comes once QEMU has started, as Ctrl-C during a boot does.
    let e = run_program(&qemu, &launch(&m, Path::new("/nonexistent-kernel")), &|| started.exists())
        .err()
        .expect("a stopped run is an error");
    assert!(e.contains("device-memory files removed"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(60), "QEMU was not killed");
    let files = seen(dir);
    assert_eq!(files.len(), 3, "{files:?}");
    for (p, existed) in &files {
        assert!(existed, "{p} did not exist when QEMU started");
        assert!(!Path::new(p).exists(), "{p} left behind after the stop");
    }
}

#[test]
fn names_are_unpredictable_and_files_private() {
    let dir = scratch("mode");
    let files: Vec<tempfile::TempPath> =
        (0..8).map(|_| create_device_file(dir.path(), "0-dev0", 4096, NAME_RANDOM).unwrap()).collect();
    let mut names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), files.len(), "the same device got the same name: {names:?}");
    // hmmk-, 16 random characters of 62 (95 bits), then the machine's name for the file.
    for n in &names {
        let rand = n.strip_prefix("hmmk-").and_then(|r| r.strip_suffix("-0-dev0")).unwrap_or_default();
        assert!(rand.len() == NAME_RANDOM && rand.chars().all(|c| c.is_ascii_alphanumeric()), "{n}");
    }
    for p in &files {
        assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let kept: Vec<PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
    drop(files);
    assert!(kept.iter().all(|p| !p.exists()), "a dropped file is removed");
}

/// The name the files get with no random characters (so a test can plant something there).
fn fixed(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("hmmk--{name}"))
}

#[test]
fn a_planted_symlink_or_file_at_the_name_is_not_followed() {
    let scratch = scratch("plant");
    let dir = scratch.path();
    let target = dir.join("victim");
    std::fs::write(&target, b"precious").unwrap();
    // A symlink to an existing file, and one to a file not there yet (O_CREAT alone would
    // create the target through it). With no random characters tempfile cannot try another
    // name, so the planted one is refused.
    std::os::unix::fs::symlink(&target, fixed(dir, "dev0")).unwrap();
    let e = create_device_file(dir, "dev0", 1 << 20, 0).unwrap_err();
    assert!(e.contains("exists"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious", "the symlink's target was changed");
    let absent = dir.join("not-yet");
    std::os::unix::fs::symlink(&absent, fixed(dir, "dev1")).unwrap();
    assert!(create_device_file(dir, "dev1", 1 << 20, 0).is_err());
    assert!(!absent.exists(), "a file was created through a dangling symlink");
    // A plain file planted at the name is refused too, and left as it was.
    std::fs::write(fixed(dir, "dev2"), b"planted").unwrap();
    assert!(create_device_file(dir, "dev2", 1 << 20, 0).is_err());
    assert_eq!(std::fs::read(fixed(dir, "dev2")).unwrap(), b"planted");
    // The planted names are left alone: nothing was unlinked in their place.
    assert!(fixed(dir, "dev0").is_symlink() && fixed(dir, "dev1").is_symlink());
}
