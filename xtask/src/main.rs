//! `cargo xtask`: build, boot, test and benchmark the unikernel.
//!
//! ```text
//! cargo xtask qemu [--machine FILE] [--accel tcg|kvm] [--gdb] [--release|--debug] [--timeout SECS] [--grub bios|uefi] [--profile [--profile-hz N]] [-- KERNEL ARGS...]
//! cargo xtask test [FILTER] [--machine FILE] [--skip-host] [--timeout SECS]
//! cargo xtask bench boot|mm|hmm|devices [--machine FILE] [--accel tcg|kvm] [--runs N] [--timeout SECS] [--kernel ELF...] [--profile [--profile-hz N]]
//! cargo xtask experiment FILE [--check] [--list] [--host] [--jobs N] [--timeout SECS]
//! cargo xtask mutants [FILE[:N[+K]]...] [--sample N] [--jobs J] [--rerun-missed]
//! cargo xtask stress [--ops N] [--seed S] [--seeds K] [--threads] [--avoid F,G] [--minimize [BUDGET]] [--trace]
//! ```
//!
//! This file parses the command line ([`options`]: one clap parser, each command with only its
//! own options, `--help` for every command and option, suggestions for misspellings) and
//! dispatches to the commands, one file each in `cmd/`, whose `Args` struct is its options.
//! The parts they share have their own modules: finding the workspace at run time
//! ([`workspace`]), set-up and building ([`setup`]), one QEMU boot ([`qemu`]), decoding the
//! guest's output ([`decode`], over `boot::protocol`, the guest/host protocol the kernel uses
//! too), machine files ([`machine`]) and experiment files ([`experiment`]).
//!
//! Invariants: arguments are parsed before anything else happens (a bad argument or `--help`
//! touches no file); a parse error exits with status 2 and clap's message, a command's error
//! with status 2 and `error: ...`, a failed test or point with 1.
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
mod profile;
mod qemu;
mod qmp;
mod run;
mod setup;
mod slurm;
mod workspace;

#[cfg(test)]
mod cli_tests;

use options::Command;
use std::process::ExitCode;

type Result<T> = std::result::Result<T, String>;

use workspace::root;

fn main() -> ExitCode {
    let cli = match options::parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = workspace::init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Qemu(a) => cmd::qemu::cmd(&a),
        Command::Test(a) => cmd::test::cmd(&a),
        Command::Bench(a) => cmd::bench::cmd(&a),
        Command::Experiment(a) => cmd::experiment::cmd(&a),
        Command::Mutants(a) => cmd::mutants::cmd(root(), &a),
        Command::Stress(a) => cmd::stress::cmd_stress(&a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
