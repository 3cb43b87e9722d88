//! Tests of how a QEMU run's end is told (issue 25's misleading messages): the xtask's own
//! timeout is not "the kernel hung", a QEMU stopped by a signal or by gdb is not a triple
//! fault, tagged lines reach the terminal decoded, and the gdb stub listens where the message
//! says: on localhost only.

use super::*;

#[test]
fn the_xtasks_own_timeout_says_so_and_how_to_raise_it() {
    let d = Outcome::Timeout(120).describe();
    assert!(d.contains("the xtask's timeout of 120 s expired"), "{d}");
    assert!(d.contains("--timeout SECS"), "{d}");
    assert!(!d.contains("the kernel hung"), "{d}");
}

#[test]
fn a_qemu_stopped_by_a_signal_is_not_a_triple_fault() {
    // QEMU catches SIGTERM/SIGINT, says so and exits 0: that was decoded as a triple fault.
    let said = vec!["qemu-system-x86_64: terminating on signal 15 from pid 4242 (kill)".to_string()];
    let o = Outcome::from_exit(Some(0), None, &said);
    assert_eq!(o, Outcome::Signal(15));
    assert!(o.describe().contains("signal 15 (SIGTERM)") && !o.describe().contains("triple"), "{}", o.describe());
    assert_eq!(Outcome::from_exit(Some(0), None, &["qemu: terminating on signal 2".to_string()]), Outcome::Signal(2));
    // gdb's `kill`.
    let o = Outcome::from_exit(Some(0), None, &["QEMU: Terminated via GDBstub".to_string()]);
    assert_eq!(o, Outcome::GdbKill);
    assert!(o.describe().contains("gdb killed the guest"), "{}", o.describe());
    // Killed outright (SIGKILL: no message, no status).
    let o = Outcome::from_exit(None, Some(9), &[]);
    assert_eq!(o, Outcome::Signal(9));
    assert!(o.describe().contains("signal 9 (SIGKILL)"), "{}", o.describe());
    // Status 0 with nothing said is still the guest's reset, and the kernel's codes still decode.
    assert_eq!(Outcome::from_exit(Some(0), None, &["some warning".to_string()]), Outcome::Reset);
    let ok = ExitCode::Success.qemu_status();
    assert_eq!(Outcome::from_exit(Some(ok), None, &["terminating on signal 15".to_string()]), Outcome::Success);
}

#[test]
fn tagged_lines_are_hidden_or_decoded_on_the_terminal() {
    assert_eq!(echo("@@POINT {\"id\":1}"), None);
    assert_eq!(echo("a log line").as_deref(), Some("a log line"));
    let mixed = format!("WARN x{}", Tag::Point.line("{\"id\":4,\"error\":\"boom\"}"));
    assert_eq!(echo(&mixed).as_deref(), Some("WARN x@@POINT 4: error: boom"));
}

/// `--gdb`: QEMU is given a stub on the loopback address only (not `-s`, which listens on every
/// interface), on the port the message tells gdb to attach to. A shell script stands in for
/// QEMU and prints the arguments it was given.
#[test]
fn the_gdb_stub_listens_on_localhost_only_as_its_message_says() {
    let (gdb, stub) = (GDB_ARGS[0], GDB_ARGS[1]);
    assert_eq!(gdb, "-gdb");
    let addr: std::net::SocketAddr = stub.strip_prefix("tcp:").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "{stub}");
    let msg = gdb_message(Path::new("target/kernel"));
    assert!(msg.contains(&format!("localhost:{}", addr.port())), "{msg}");
    assert!(msg.contains(&format!("target remote :{}", addr.port())), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu");
    std::fs::write(&qemu, "#!/bin/sh\nfor a in \"$@\"; do echo \"arg $a\"; done\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o700)).unwrap();
    let m = crate::machine::Machine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/default.toml")).unwrap();
    let l = Launch { gdb: true, ..Launch::new(Path::new("target/kernel"), &m, String::new(), Duration::from_secs(60)) };
    let run = run_program(&qemu, &l, &|| false).unwrap();
    let args: Vec<&str> = run.lines.iter().filter_map(|l| l.strip_prefix("arg ")).collect();
    let at = args.iter().position(|a| *a == "-gdb").unwrap_or_else(|| panic!("no -gdb in {args:?}"));
    assert_eq!(&args[at..at + 3], GDB_ARGS);
    assert!(!args.contains(&"-s"), "{args:?}");
}
