//! Tests of the command line ([`crate::options`]): each command takes only its own options,
//! misspellings get suggestions, `--help` describes every command and option.

use crate::options::{Cli, Command, parse};
use clap::CommandFactory;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn err(s: &str) -> String {
    parse(args(s)).unwrap_err().to_string()
}

#[test]
fn options_that_do_not_apply_to_a_command_are_rejected() {
    // The example: each of these was silently accepted by `test`.
    for opt in ["--accel kvm", "--gdb", "--runs 3", "--grub bios", "--host", "--release"] {
        let e = err(&format!("test {opt}"));
        assert!(e.contains("unexpected argument"), "test {opt}: {e}");
    }
    assert!(err("experiment e.toml --machine qemu/x.toml").contains("unexpected argument '--machine'"));
    assert!(err("bench boot --gdb").contains("unexpected argument '--gdb'"));
    assert!(err("stress --jobs 2").contains("unexpected argument '--jobs'"));
    assert!(err("qemu --skip-host").contains("unexpected argument '--skip-host'"));
    // Values are checked too.
    assert!(err("qemu --accel xen").contains("possible values: tcg, kvm"));
    assert!(err("qemu --timeout 0").contains("not a positive whole number"));
    assert!(err("qemu --release --debug").contains("cannot be used with"));
    assert!(err("experiment e.toml --jobs 0").contains("not a positive whole number"));
    assert!(err("bench fast").contains("possible values: boot, mm, hmm, devices"));
    assert!(err("stress --avoid nosuch").contains("unknown feature nosuch; known:"));
    // Options of a command that do not apply to the way it is asked to run.
    assert!(err("qemu --gdb --timeout 5").contains("cannot be used with"));
    assert!(err("experiment e.toml --host --timeout 5").contains("cannot be used with"));
    assert!(err("experiment e.toml --host --kernel k.elf").contains("cannot be used with"));
    assert!(err("experiment e.toml --slurm --host --kernel k.elf").contains("cannot be used with"));
    assert!(parse(args("qemu --gdb")).is_ok() && parse(args("experiment e.toml --host")).is_ok());
    let bench = |s: &str| match parse(args(s)).unwrap().command {
        Command::Bench(b) => b.check(),
        other => panic!("{other:?}"),
    };
    assert!(bench("bench mm --runs 3").unwrap_err().contains("this benchmark boots once"));
    assert!(bench("bench devices --kernel a").unwrap_err().contains("bench mm or bench hmm only"));
    assert!(bench("bench boot --runs 3").is_ok() && bench("bench hmm --kernel a --kernel b --runs 3").is_ok());
    assert!(bench("bench mm").is_ok());
}

#[test]
fn misspellings_get_a_suggestion() {
    let e = err("expriment experiments/default.toml");
    assert!(
        e.contains("unrecognized subcommand 'expriment'") && e.contains("similar subcommand exists: 'experiment'"),
        "{e}"
    );
    let e = err("qemu --machin qemu/default.toml");
    assert!(e.contains("a similar argument exists: '--machine'"), "{e}");
    let e = err("test --skiphost");
    assert!(e.contains("'--skip-host'"), "{e}");
}

#[test]
fn every_command_and_option_has_help() {
    let cli = Cli::command();
    cli.clone().debug_assert();
    let mut n = 0;
    for sub in cli.get_subcommands() {
        assert!(sub.get_about().is_some(), "{} has no description", sub.get_name());
        for a in sub.get_arguments() {
            assert!(a.get_help().is_some(), "{} {} has no description", sub.get_name(), a.get_id());
            n += 1;
        }
        // `cargo xtask COMMAND --help` works (it was `unknown option '--help'`).
        let e = parse(args(&format!("{} --help", sub.get_name()))).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{}", sub.get_name());
        assert!(e.to_string().contains("Usage: cargo xtask"), "{e}");
    }
    assert!(n >= 30, "{n} options");
}

#[test]
fn the_commands_parse_their_options() {
    let Command::Test(_) = parse(args("test mm::fork --skip-host --timeout 500")).unwrap().command else { panic!() };
    let Command::Qemu(_) =
        parse(args("qemu --machine qemu/numa2.toml --accel kvm --gdb --debug --grub uefi -- log=debug job=none"))
            .unwrap()
            .command
    else {
        panic!()
    };
    let Command::Bench(_) = parse(args("bench mm --kernel a.elf --kernel b.elf --runs 3")).unwrap().command else {
        panic!()
    };
    let Command::Experiment(_) =
        parse(args("experiment experiments/default.toml --check --list --host --jobs 2")).unwrap().command
    else {
        panic!()
    };
    let Command::Stress(_) = parse(args("stress --ops 10 --seed 0x10 --avoid inject --minimize")).unwrap().command
    else {
        panic!()
    };
    // A test filter is one word: it goes on the kernel command line.
    assert!(parse(vec!["test".into(), "a b".into()]).unwrap_err().to_string().contains("one word"));
    assert!(err("test a --filter b").contains("cannot be used with"));
    assert!(err("experiment").contains("<FILE>"));
}

#[test]
fn ktest_kernel_arguments_boot_the_test_build() {
    use crate::cmd::qemu::kernel_profile;
    use crate::setup::Profile;
    let p = |a: &str| match parse(args(a)).unwrap().command {
        Command::Qemu(q) => q,
        other => panic!("{other:?}"),
    };
    // `cargo xtask qemu -- ktest.filter=pci::` was accepted and ignored by the release kernel.
    let q = p("qemu -- log=warn ktest.filter=pci::");
    assert_eq!(kernel_profile(&q.kernel_args, q.profile), Ok(Profile::Ktest));
    let q = p("qemu -- ktest.from=3");
    assert_eq!(kernel_profile(&q.kernel_args, q.profile), Ok(Profile::Ktest));
    let q = p("qemu --debug -- ktest.filter=mm::");
    let e = kernel_profile(&q.kernel_args, q.profile).unwrap_err();
    assert!(e.contains("'ktest.filter=mm::'") && e.contains("drop --debug"), "{e}");
    // Other arguments keep the build asked for; ktest.crash works in every build.
    let q = p("qemu --debug -- log=debug ktest.crash=panic");
    assert_eq!(kernel_profile(&q.kernel_args, q.profile), Ok(Profile::Debug));
    let q = p("qemu");
    assert_eq!(kernel_profile(&q.kernel_args, q.profile), Ok(Profile::Release));
}
