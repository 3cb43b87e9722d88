//! The command line: one clap parser for the whole xtask, each command with only its own
//! options (an option another command has is rejected, with clap's suggestion of a close
//! spelling), and the option groups several commands share.
//!
//! Each command's own options are its `Args` struct in its file under `cmd/`; this module
//! holds the top-level parser ([`Cli`], [`Command`]) and the shared pieces: the machine file
//! ([`MachineOpt`]), the accelerator ([`Accel`]) and the kernel build profile
//! ([`ProfileOpt`]). Parsing only reads the arguments: no file is opened here, so `--help`
//! and a misspelling cost nothing.

use crate::cmd;
use crate::setup::Profile;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `cargo xtask`: build, boot, test and benchmark the unikernel.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, boot, test and benchmark the unikernel",
    long_about = "Build, boot, test and benchmark the unikernel.\n\nThe commands that boot the kernel set up what a fresh machine lacks (the x86_64-unknown-none target; QEMU via apt when run as root, otherwise the exact command is printed). `cargo xtask COMMAND --help` describes each command's options."
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the kernel and boot it in QEMU: kernel log, boot report, the default job and (on
    /// the default machine) the default experiment.
    Qemu(cmd::qemu::Args),
    /// Every test: host tests, in-kernel tests in QEMU, boot checks (or only those matching a
    /// filter).
    Test(cmd::test::Args),
    /// Benchmarks: boot time, address-space operations, HMM operations, the real devices.
    Bench(cmd::bench::Args),
    /// Run an experiment file (its points in QEMU guests, or on the host) into a run folder, resume a run, merge its shards, or only check it.
    Experiment(cmd::experiment::Args),
    /// Mutation testing of the HMM core with cargo-mutants.
    Mutants(cmd::mutants::Args),
    /// The seeded randomized interleaving test of the HMM stack, as a longer soak.
    Stress(cmd::stress::Args),
}

/// Parses the xtask's arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("cargo xtask".to_string()).chain(args))
}

/// `--machine FILE`: a machine file (`qemu/*.toml`).
#[derive(Debug, Clone, clap::Args)]
pub struct MachineOpt {
    /// The machine file (any of qemu/*.toml) [default: the command's own, e.g. qemu/default.toml].
    #[arg(long, value_name = "FILE")]
    pub machine: Option<PathBuf>,
}

impl MachineOpt {
    /// The file given, else `default` under the workspace root.
    pub fn path_or(&self, default: &str) -> PathBuf {
        self.machine.clone().unwrap_or_else(|| crate::root().join(default))
    }
}

/// `--accel tcg|kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Accel {
    /// QEMU's emulator (TCG): works everywhere.
    #[default]
    Tcg,
    /// KVM: for real hardware (nested KVM is far slower than TCG on the build machines).
    Kvm,
}

impl Accel {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcg => "tcg",
            Self::Kvm => "kvm",
        }
    }
}

/// `--release` (the default) or `--debug`: the kernel build.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ProfileOpt {
    /// Boot the optimised kernel build (the default).
    #[arg(long, conflicts_with = "debug")]
    pub release: bool,
    /// Boot the unoptimised debug kernel build.
    #[arg(long)]
    pub debug: bool,
}

impl ProfileOpt {
    /// The profile chosen.
    pub fn profile(self) -> Profile {
        if self.debug { Profile::Debug } else { Profile::Release }
    }
}

/// A positive number (for counts where 0 means nothing to do).
pub fn positive<T: std::str::FromStr + PartialOrd + Default>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!("'{s}' is not a positive whole number")),
    }
}
