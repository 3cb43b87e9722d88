//! The device-memory files: unguessable, private, never following a planted name, held by QEMU
//! only once it has them open, and gone after a run and after a stop. A shell script stands
//! in for QEMU: it opens the `mem-path=` files as QEMU does and reports what it sees.

use super::*;
use crate::machine::Machine;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-shm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
    let dir = scratch("run");
    // After its first line, QEMU waits (at most 20 s) for its files to be unlinked, then
    // counts the deleted files it still holds open.
    let qemu = fake_qemu(
        &dir,
        r#"echo "opened"
i=0; while [ -e "$last" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
if [ -e "$last" ]; then echo "still there"; else echo "unlinked"; fi
echo "held $(ls -l /proc/$$/fd | grep -c '(deleted)')"
exit 0"#,
    );
    let m = machine();
    let run = run_program(&qemu, &launch(&m, Path::new("/nonexistent-kernel")), &|| false).unwrap();
    let files = seen(&dir);
    // qemu/default.toml: dev0 with its hot-plug region, dev1.
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|f| f.1), "every file existed when QEMU started: {files:?}");
    assert_eq!(run.lines, ["opened", "unlinked", "held 3"], "QEMU kept its open files after the unlink");
    for (p, _) in &files {
        assert!(!Path::new(p).exists(), "{p} left behind after the run");
        assert!(p.starts_with("/dev/shm/hmmk-"), "{p}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stop_kills_qemu_and_removes_the_files_it_had_not_opened_yet() {
    let dir = scratch("stop");
    // QEMU that never prints a line (so nothing unlinks the files early) and never exits.
    let qemu = fake_qemu(&dir, "exec sleep 600");
    let m = machine();
    let started = dir.join("started");
    let t0 = Instant::now();
    // The stop comes once QEMU has started, as Ctrl-C during a boot does.
    let e = run_program(&qemu, &launch(&m, Path::new("/nonexistent-kernel")), &|| started.exists())
        .err()
        .expect("a stopped run is an error");
    assert!(e.contains("device-memory files removed"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(60), "QEMU was not killed");
    let files = seen(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    for (p, existed) in &files {
        assert!(existed, "{p} did not exist when QEMU started");
        assert!(!Path::new(p).exists(), "{p} left behind after the stop");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn names_are_unpredictable_and_files_private() {
    let names: Vec<String> = (0..8).map(|_| shm_prefix(1)).collect();
    let mut uniq = names.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), names.len(), "the same launch number gave the same name: {names:?}");
    // 64 random bits in hex after the process and launch number.
    for n in &names {
        let rand = n.rsplit('-').next().unwrap();
        assert!(rand.len() == 16 && rand.chars().all(|c| c.is_ascii_hexdigit()), "{n}");
    }
    let dir = scratch("mode");
    let p = dir.join("dev0").display().to_string();
    create_device_file(&p, 4096).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_planted_symlink_or_file_at_the_name_is_not_followed() {
    let dir = scratch("plant");
    let target = dir.join("victim");
    std::fs::write(&target, b"precious").unwrap();
    // A symlink to an existing file, and one to a file not there yet (O_CREAT alone would
    // create the target through it).
    let link = dir.join("dev0");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = create_device_file(&link.display().to_string(), 1 << 20).unwrap_err();
    assert!(e.contains("must not exist"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious", "the symlink's target was changed");
    let dangling = dir.join("dev1");
    let absent = dir.join("not-yet");
    std::os::unix::fs::symlink(&absent, &dangling).unwrap();
    assert!(create_device_file(&dangling.display().to_string(), 1 << 20).is_err());
    assert!(!absent.exists(), "a file was created through a dangling symlink");
    // A plain file planted at the name is refused too, and left as it was.
    let planted = dir.join("dev2");
    std::fs::write(&planted, b"planted").unwrap();
    assert!(create_device_file(&planted.display().to_string(), 1 << 20).is_err());
    assert_eq!(std::fs::read(&planted).unwrap(), b"planted");
    let _ = std::fs::remove_dir_all(&dir);
}
