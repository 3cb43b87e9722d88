//! The job scripts, sbatch's options and the parsing of Slurm's answers, without a cluster (the
//! cluster test is [`super::check`]).

use super::cluster::{node_line, slurm_conf};
use super::*;

/// A directory under the temp dir (made by tempfile), removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        Self(tempfile::Builder::new().prefix(&format!("xtask-slurm-{name}-")).tempdir().unwrap().keep())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A sweep in `d` whose "xtask" is a bash script that writes its working directory and
/// arguments, one a line, to `args-$SLURM_ARRAY_TASK_ID.txt` (or `args-merge.txt`).
fn sweep(d: &Path) -> Sweep {
    let fake = d.join("fake-xtask");
    std::fs::write(
        &fake,
        "#!/bin/bash\nout=\"$(dirname \"$0\")/args-${SLURM_ARRAY_TASK_ID:-merge}.txt\"\npwd > \"$out\"\nprintf '%s\\n' \"$@\" >> \"$out\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let workdir = d.join("check out");
    std::fs::create_dir_all(&workdir).unwrap();
    Sweep {
        name: "default".into(),
        run_dir: d.join("run 1"),
        workdir,
        xtask: fake,
        shard_args: ["experiment", "experiments/it's.toml", "--host", "--shard", SHARD, "--into", "x=y z"]
            .map(String::from)
            .to_vec(),
        merge_args: ["experiment", "merge", "run 1"].map(String::from).to_vec(),
        tasks: 3,
        cpus_per_task: 2,
        partition: Some("batch".into()),
    }
}

#[test]
fn arguments_are_quoted_for_bash() {
    assert_eq!(sh_quote("experiments/default.toml"), "experiments/default.toml");
    assert_eq!(sh_quote("--shard=1/2"), "--shard=1/2");
    assert_eq!(sh_quote("a b"), "'a b'");
    assert_eq!(sh_quote("it's"), r"'it'\''s'");
    assert_eq!(sh_quote("$HOME"), "'$HOME'");
    assert_eq!(sh_quote(""), "''");
}

#[test]
fn each_array_task_runs_its_shard_with_the_arguments_as_given() {
    // The scripts as bash runs them under Slurm: the copied binary, from the checkout, with
    // each argument intact and the task's shard in place of SHARD.
    let d = Dir::new("scripts");
    let s = sweep(&d.0);
    let scripts = write(&s).unwrap();
    assert_eq!(scripts, Scripts::at(&s.run_dir));
    assert!(scripts.xtask.is_file(), "the binary is copied into the run folder");
    for task in ["0", "2"] {
        let st = Command::new("bash").arg(&scripts.shards).env("SLURM_ARRAY_TASK_ID", task).status().unwrap();
        assert!(st.success());
        let got = std::fs::read_to_string(scripts.dir.join(format!("args-{task}.txt"))).unwrap();
        let want = format!(
            "{}\nexperiment\nexperiments/it's.toml\n--host\n--shard\n{task}/3\n--into\nx=y z\n",
            s.workdir.display()
        );
        assert_eq!(got, want);
    }
    let st = Command::new("bash").arg(&scripts.merge).env_remove("SLURM_ARRAY_TASK_ID").status().unwrap();
    assert!(st.success());
    let got = std::fs::read_to_string(scripts.dir.join("args-merge.txt")).unwrap();
    assert_eq!(got, format!("{}\nexperiment\nmerge\nrun 1\n", s.workdir.display()));
    // Run by hand outside an array, the shard script says what it is.
    let out = Command::new("bash").arg(&scripts.shards).env_remove("SLURM_ARRAY_TASK_ID").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Slurm job array task (sbatch --array=0-2)"));
}

#[test]
fn with_kernel_each_shard_boots_that_elf_and_nothing_is_built() {
    // `--kernel` given relative to where the sweep is submitted from: absolute in the shards.
    let given = ShardKernel::of(false, Some(Path::new("old/kernel"))).unwrap();
    let ShardKernel::Given(abs) = &given else { panic!("{given:?}") };
    assert_eq!(abs, &std::env::current_dir().unwrap().join("old/kernel"));
    assert_eq!(ShardKernel::of(false, None), Ok(ShardKernel::Build));
    assert_eq!(ShardKernel::of(true, None), Ok(ShardKernel::Host));
    // The shard script as bash runs it under Slurm passes it on.
    let d = Dir::new("kernel");
    let base = sweep(&d.0);
    let s = Sweep { shard_args: shard_args(&base.run_dir, 1, Some(600), Some(abs)), ..base };
    let scripts = write(&s).unwrap();
    let st = Command::new("bash").arg(&scripts.shards).env("SLURM_ARRAY_TASK_ID", "1").status().unwrap();
    assert!(st.success());
    let got = std::fs::read_to_string(scripts.dir.join("args-1.txt")).unwrap();
    let want = format!(
        "{}\nexperiment\n--resume\n{}\n--shard\n1/3\n--jobs\n1\n--timeout\n600\n--kernel\n{}\n",
        s.workdir.display(),
        s.run_dir.display(),
        abs.display()
    );
    assert_eq!(got, want);
    // Without --kernel: no --kernel.
    assert!(!shard_args(&s.run_dir, 1, Some(600), None).iter().any(|a| a == "--kernel"));
}

#[test]
fn sbatch_gets_an_array_of_n_tasks_and_a_merge_after_it() {
    let d = Dir::new("options");
    let s = sweep(&d.0);
    let scripts = Scripts::at(&s.run_dir);
    let a = array_options(&s, &scripts);
    assert_eq!(a[0], "--parsable");
    for want in [
        "--array=0-2".to_string(),
        "--job-name=hmm-default".into(),
        "--cpus-per-task=2".into(),
        "--partition=batch".into(),
        format!("--output={}/slurm/shard-%a.out", s.run_dir.display()),
        format!("--chdir={}", s.workdir.display()),
    ] {
        assert!(a.contains(&want), "{want} not in {a:?}");
    }
    let m = merge_options(&s, &scripts, Some(41));
    for want in [
        "--dependency=afterok:41".to_string(),
        "--kill-on-invalid-dep=yes".into(),
        "--partition=batch".into(),
        format!("--output={}/slurm/merge.out", s.run_dir.display()),
    ] {
        assert!(m.contains(&want), "{want} not in {m:?}");
    }
    // No partition: the cluster's default.
    let s = Sweep { partition: None, tasks: 1, ..s };
    let a = array_options(&s, &scripts);
    assert!(a.contains(&"--array=0-0".to_string()));
    assert!(!a.iter().any(|o| o.starts_with("--partition")));
    // The scripts' headers record the submission.
    assert!(merge_script(&s, &scripts).contains("--dependency=afterok:ARRAY"));
    assert!(array_script(&s, &scripts).contains("--array=0-0"));
}

#[test]
fn a_sweep_that_cannot_be_written_is_refused() {
    let d = Dir::new("invalid");
    let s = Sweep { tasks: 0, ..sweep(&d.0) };
    assert_eq!(write(&s), Err(SlurmError::Invalid { what: "--tasks takes a positive count".into() }));
    let s = Sweep { run_dir: "target/x".into(), ..sweep(&d.0) };
    assert!(matches!(write(&s), Err(SlurmError::Invalid { what }) if what.contains("not an absolute path")));
    let s = Sweep { run_dir: d.0.join("100%a"), ..sweep(&d.0) };
    assert!(matches!(write(&s), Err(SlurmError::Invalid { what }) if what.contains("'%'")));
    let s = Sweep { xtask: d.0.join("missing"), ..sweep(&d.0) };
    assert!(matches!(write(&s), Err(SlurmError::Io { error, .. }) if error.contains("copying it to")));
}

#[test]
fn job_ids_are_read_from_sbatch_parsable() {
    assert_eq!(parse_job_id("17\n"), Ok(17));
    assert_eq!(parse_job_id("17;cluster\n"), Ok(17));
    assert_eq!(
        parse_job_id("Submitted batch job 17\n"),
        Err(SlurmError::BadJobId { output: "Submitted batch job 17\n".into() })
    );
}

/// `scontrol show job -o` as Slurm 22.05 prints it (cut to the fields that matter and a few
/// around them): an array with a failed and a completed task, and the merge cancelled for it.
const SCONTROL_ARRAY: &str = "JobId=1 ArrayJobId=1 ArrayTaskId=1 JobName=wrap UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 ExitCode=3:0 RunTime=00:00:02 StdOut=/tmp/sl1/a-1.out Power= \n\
JobId=3 ArrayJobId=1 ArrayTaskId=0 JobName=wrap UserId=root(0) JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 ExitCode=0:0 RunTime=00:00:02 StdOut=/tmp/sl1/a-0.out Power= \n";
const SCONTROL_MERGE: &str = "JobId=2 JobName=wrap UserId=root(0) JobState=CANCELLED Reason=DependencyNeverSatisfied Dependency=afterok:1_*(failed) ExitCode=0:0 Power= KillOInInvalidDependent=Yes \n";
const SCONTROL_PENDING: &str =
    "JobId=1 ArrayJobId=1 ArrayTaskId=0-1 JobName=wrap JobState=PENDING Reason=None Dependency=(null) ExitCode=0:0\n";

#[test]
fn scontrol_and_sacct_states_are_read() {
    let a = parse_scontrol(SCONTROL_ARRAY);
    assert_eq!(
        a,
        [
            JobState {
                task: Some(1),
                state: "FAILED".into(),
                exit: Some("3:0".into()),
                reason: Some("NonZeroExitCode".into())
            },
            JobState { task: Some(0), state: "COMPLETED".into(), exit: Some("0:0".into()), reason: None },
        ]
    );
    let m = parse_scontrol(SCONTROL_MERGE);
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].state.as_str(), m[0].reason.as_deref()), ("CANCELLED", Some("DependencyNeverSatisfied")));
    assert!(m[0].ended() && a.iter().all(JobState::ended));
    // The pending rest of an array is one line without a single task.
    let p = parse_scontrol(SCONTROL_PENDING);
    assert_eq!((p[0].task, p[0].ended()), (None, false));
    assert_eq!(parse_scontrol("slurm_load_jobs error: Invalid job id specified\n"), []);
    let s = parse_sacct("7_0|COMPLETED|0:0\n7_1|CANCELLED by 0|0:15\n8|RUNNING|0:0\n");
    assert_eq!(s[1], JobState { task: Some(1), state: "CANCELLED".into(), exit: Some("0:15".into()), reason: None });
    assert_eq!((s[2].task, s[2].ended()), (None, false));
}

#[test]
fn a_failed_shard_is_named_with_its_log() {
    let sub = Submitted { array: 1, merge: 2, tasks: 2, scripts: Scripts::at(Path::new("/runs/r")) };
    let failed = failed_shards(&sub, &parse_scontrol(SCONTROL_ARRAY));
    assert_eq!(failed, ["shard 1/2 FAILED (exit 3:0), log /runs/r/slurm/shard-1.out"]);
    assert!(sub.to_string().contains("job array 1 (2 tasks"), "{sub}");
    assert!(sub.to_string().contains("merge job 2"), "{sub}");
    let t = SlurmError::Timeout { secs: 60, jobs: vec![1, 2] }.to_string();
    assert!(t.contains("squeue -j 1,2") && t.contains("scancel 1 2"), "{t}");
}

#[test]
fn a_missing_sbatch_says_where_to_run() {
    let c = Client { conf: None };
    let e = c.run("sbatch-that-does-not-exist", &[]).unwrap_err();
    assert_eq!(e, SlurmError::NotInstalled { tool: "sbatch-that-does-not-exist".into() });
    assert!(e.to_string().contains("login node"), "{e}");
}

#[test]
fn the_node_is_the_machine_slurmd_finds_named_localhost() {
    let c = "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105\nUpTime=0-00:10:53\n";
    assert_eq!(
        node_line(c).as_deref(),
        Some(
            "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105 State=UNKNOWN"
        )
    );
    assert_eq!(node_line("slurmd: error: something\n"), None);
    let conf = slurm_conf(Path::new("/tmp/c"), "NodeName=localhost CPUs=2", (6817, 6818));
    for want in [
        "SlurmctldPort=6817\n",
        "SlurmdPort=6818\n",
        "AuthInfo=socket=/tmp/c/munge/munge.socket\n",
        "StateSaveLocation=/tmp/c/state\n",
        "ProctrackType=proctrack/linuxproc\n",
        "TaskPlugin=task/none\n",
        "SelectType=select/cons_tres\n",
        "NodeName=localhost CPUs=2\n",
        "PartitionName=debug Nodes=localhost Default=YES",
    ] {
        assert!(conf.contains(want), "{want:?} not in\n{conf}");
    }
}
