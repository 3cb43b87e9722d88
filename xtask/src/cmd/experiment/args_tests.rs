//! `cargo xtask experiment`'s run-folder options: `--resume`, `--shard`, `merge`.

use super::*;
use crate::options::{Command, parse};

fn exp(s: &str) -> std::result::Result<Args, String> {
    match parse(s.split_whitespace().map(String::from)) {
        Ok(c) => match c.command {
            Command::Experiment(a) => Ok(a),
            _ => panic!("{s}: not the experiment command"),
        },
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn resume_shard_and_merge_parse_and_mistakes_are_refused() {
    let a = exp("experiment --resume default/latest --shard 1/2 --jobs 1").unwrap();
    assert_eq!(
        (a.resume.as_deref(), a.shard, a.file.as_ref()),
        (Some("default/latest"), Some(Shard { index: 1, count: 2 }), None)
    );
    let a = exp("experiment experiments/default.toml --resume default/latest").unwrap();
    assert!(a.file.is_some() && a.resume.is_some());
    let a = exp("experiment experiments/default.toml --shard 0/3 --host").unwrap();
    assert_eq!(a.shard, Some(Shard { index: 0, count: 3 }));
    let a = exp("experiment merge default/latest").unwrap();
    assert!(matches!(&a.sub, Some(Sub::Merge { run }) if run == "default/latest"), "{a:?}");
    // A shard past the count, a resume that is also a check, a merge without its folder or
    // with run options, no file and no resume.
    assert!(exp("experiment e.toml --shard 2/2").unwrap_err().contains("0 <= I < N"));
    assert!(exp("experiment --resume r --check").unwrap_err().contains("cannot be used with"));
    assert!(exp("experiment merge").unwrap_err().contains("<RUN>"));
    assert!(exp("experiment merge r --host").is_err());
    assert!(exp("experiment").unwrap_err().contains("<FILE>"));
}

/// `--kernel` takes only an ELF file, and says what is wrong with anything else.
#[test]
fn kernel_must_be_an_elf_file() {
    let missing = check_elf(std::path::Path::new("/nonexistent/kernel")).unwrap_err();
    assert!(missing.starts_with("--kernel /nonexistent/kernel: cannot read it"), "{missing}");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("kernel.iso");
    std::fs::write(&text, "not an elf").unwrap();
    let e = check_elf(&text).unwrap_err();
    assert!(e.contains("not an ELF file"), "{e}");
    // This test binary is an ELF.
    assert_eq!(check_elf(&std::env::current_exe().unwrap()), Ok(()));
}

/// `--kernel ELF` with `--slurm` is accepted, and a shard's command line with `--kernel`
/// (`crate::slurm::shard_args`) parses, taking the kernel as given.
#[test]
fn a_slurm_sweep_takes_kernel_and_its_shards_command_line_parses() {
    let a = exp("experiment e.toml --slurm --tasks 2 --kernel old/kernel").unwrap();
    assert!(a.slurm.options().is_some());
    assert_eq!(a.kernel.as_deref(), Some(std::path::Path::new("old/kernel")));
    let k = std::path::Path::new("/builds/old/kernel");
    let shard = crate::slurm::shard_args(std::path::Path::new("/runs/default/r1"), 2, Some(600), Some(k));
    let s = exp(&shard.join(" ").replace(crate::slurm::SHARD, "1/2")).unwrap();
    assert_eq!((s.kernel.as_deref(), s.shard), (Some(k), Some(Shard { index: 1, count: 2 })));
    assert_eq!((s.resume.as_deref(), s.timeout, s.jobs), (Some("/runs/default/r1"), 600, Some(2)));
}
