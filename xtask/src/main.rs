//! `cargo xtask`: build, boot, test and benchmark the unikernel.
//!
//! This file holds the usage and the dispatch to the commands, one file each in `cmd/`
//! (`qemu`, `test`, `bench`, `experiment`, `mutants`, `stress`). The parts they share have
//! their own modules: finding the workspace at run time ([`workspace`]), set-up and building
//! ([`setup`]), one QEMU boot ([`qemu`]), the shared options ([`options`]), decoding the
//! guest's output ([`decode`], over `boot::protocol`, the guest/host protocol the kernel
//! uses too), machine files ([`machine`]) and experiment files ([`experiment`]).
//!
//! The commands that boot the kernel set up what a fresh machine lacks: the
//! `x86_64-unknown-none` target, and QEMU (installed with apt when running as root, otherwise
//! the exact command is printed). QEMU always runs under a timeout, and dies with the xtask
//! (PR_SET_PDEATHSIG).

mod cmd;
mod decode;
mod experiment;
mod grub;
mod interrupt;
mod layers;
mod machine;
mod options;
mod qemu;
mod run;
mod setup;
mod slurm;
mod workspace;

use std::process::ExitCode;

type Result<T> = std::result::Result<T, String>;

use workspace::root;

fn usage() -> String {
    "usage:\n  cargo xtask qemu [--machine FILE] [--accel tcg|kvm] [--gdb] [--release|--debug] [--timeout SECS] [--grub bios|uefi] [-- KERNEL ARGS...]\n  cargo xtask test [--machine FILE] [--skip-host] [--filter TEXT]\n  cargo xtask bench boot [--runs N] [--machine FILE]\n  cargo xtask bench mm [--machine FILE] [--kernel ELF --kernel ELF ... --runs N]\n  cargo xtask bench hmm [--machine FILE] [--kernel ELF --kernel ELF ... --runs N]\n  cargo xtask bench devices [--machine FILE]\n  cargo xtask experiment FILE [--host] [--jobs N] [--timeout SECS] [--shard I/N]\n  cargo xtask experiment FILE [--host] [--jobs N] [--timeout SECS] --slurm [--partition P] [--tasks N] [--wait [--wait-timeout SECS]]\n  cargo xtask experiment --resume RUN [FILE] [--jobs N] [--timeout SECS] [--shard I/N]\n  cargo xtask experiment merge RUN\n  cargo xtask mutants [FILE[:N]...] [--sample N] [--jobs J] [--rerun-missed]\n  cargo xtask stress [--ops N] [--seed S] [--seeds K] [--threads] [--avoid F,G] [--minimize [BUDGET]] [--trace]"
        .into()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = workspace::init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match args.first().map(String::as_str) {
        Some("qemu") => cmd::qemu::cmd(&args[1..]),
        Some("test") => cmd::test::cmd(&args[1..]),
        Some("bench") => cmd::bench::cmd(&args[1..]),
        Some("experiment") => cmd::experiment::cmd(&args[1..]),
        Some("mutants") => cmd::mutants::cmd(root(), &args[1..]),
        Some("stress") => cmd::stress::cmd_stress(&args[1..]),
        Some("-h" | "--help") | None => {
            println!("{}", usage());
            Ok(0)
        }
        Some(other) => Err(format!("unknown command '{other}'\n{}", usage())),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
