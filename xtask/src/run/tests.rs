use super::*;

/// A scratch folder, removed when dropped.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("xtask-run-{name}-")).tempdir().unwrap()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn run_ids_are_utc_dates() {
    assert_eq!(utc(0, '-'), "1970-01-01T00-00-00Z");
    // 2026-12-02 14:05:33 UTC.
    assert_eq!(utc(1_796_220_333, '-'), "2026-12-02T14-05-33Z");
    assert_eq!(utc(1_796_220_333, ':'), "2026-12-02T14:05:33Z");
    // A leap day, and the last second of a year.
    assert_eq!(utc(951_782_400, ':'), "2000-02-29T00:00:00Z");
    assert_eq!(utc(1_704_067_199, ':'), "2023-12-31T23:59:59Z");
}

#[test]
fn run_folders_are_never_reused_and_latest_names_the_newest() {
    let tmp = scratch("dirs");
    let base = tmp.path().to_path_buf();
    let t = 1_796_220_333;
    let a = new_dir(&base, t).unwrap();
    std::fs::write(a.join("results.csv"), "old").unwrap();
    // The same second again: a new folder beside it, the old one untouched.
    let b = new_dir(&base, t).unwrap();
    let c = new_dir(&base, t + 1).unwrap();
    assert_eq!(a.file_name().unwrap(), "2026-12-02T14-05-33Z");
    assert_eq!(b.file_name().unwrap(), "2026-12-02T14-05-33Z-1");
    assert_eq!(c.file_name().unwrap(), "2026-12-02T14-05-34Z");
    assert!(!b.join("results.csv").exists());
    assert_eq!(std::fs::read_to_string(a.join("results.csv")).unwrap(), "old");
    assert_eq!(std::fs::read_link(base.join(LATEST)).unwrap(), Path::new("2026-12-02T14-05-34Z"));
    assert!(base.join(LATEST).join(".").is_dir());
    // No temporary link is left beside them.
    let mut names: Vec<String> =
        std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["2026-12-02T14-05-33Z", "2026-12-02T14-05-33Z-1", "2026-12-02T14-05-34Z", LATEST]);
}

#[test]
fn shards_partition_the_points() {
    assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
    for bad in ["3/3", "0/0", "1", "a/2", "-1/2", "1/-2"] {
        let e = Shard::parse(bad).unwrap_err();
        assert!(e.contains("I/N"), "{bad}: {e}");
    }
    // Every point in exactly one shard, whatever the count; the shards' sizes differ by at
    // most one.
    for n in 1..6 {
        let shards: Vec<Shard> = (0..n).map(|i| Shard { index: i, count: n }).collect();
        let sizes: Vec<usize> = shards.iter().map(|s| (0..215).filter(|id| s.contains(*id)).count()).collect();
        for id in 0..215 {
            assert_eq!(shards.iter().filter(|s| s.contains(id)).count(), 1);
        }
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
    }
}

fn rec(id: u32, error: Option<&str>) -> Record {
    let result = match error {
        Some(e) => serde_json::json!({ "id": id, "error": e }),
        None => serde_json::json!({ "id": id, "sim_ns": 1000.0 * f64::from(id) }),
    };
    Record { id, result, trace: vec![serde_json::json!({ "point": id, "t": 1.5 })] }
}

#[test]
fn records_read_back_a_finished_point_wins_and_a_cut_line_is_dropped() {
    let tmp = scratch("records");
    let dir = tmp.path().to_path_buf();
    let run = Run::open_records(dir.clone(), None).unwrap();
    run.record(&rec(0, None)).unwrap();
    run.record(&rec(1, Some("QEMU: killed"))).unwrap();
    run.record(&rec(2, None)).unwrap();
    drop(run);
    // A shard's file: point 1 finished there, point 2 failed after it had finished.
    let shard = Run::open_records(dir.clone(), Some(Shard { index: 1, count: 2 })).unwrap();
    shard.record(&rec(1, None)).unwrap();
    shard.record(&rec(2, Some("later failure"))).unwrap();
    drop(shard);
    // A kill in the middle of a line.
    let p = dir.join("points.jsonl");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text += "{\"id\":3,\"result\":{\"id\":3,\"sim";
    std::fs::write(&p, &text).unwrap();
    let r = read_records(&dir).unwrap();
    assert_eq!(r.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(r.values().all(Record::finished), "{r:?}");
    assert_eq!(r[&1].trace, rec(1, None).trace);
    // Reopening cuts the partial line off, so the next record is a line of its own.
    let again = Run::open_records(dir.clone(), None).unwrap();
    again.record(&rec(3, None)).unwrap();
    let r = read_records(&dir).unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[&3], rec(3, None));
    // Damage in the middle of a file is an error naming the file and line.
    let mut lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
    lines[1] = "garbage".into();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let e = read_records(&dir).unwrap_err();
    assert!(e.contains("points.jsonl:2:"), "{e}");
}

#[test]
fn records_group_a_boots_trace_events_by_point() {
    let mut results = experiment::Results::new();
    results.insert(4, serde_json::json!({ "id": 4 }));
    results.insert(5, serde_json::json!({ "id": 5 }));
    let traces = vec![
        serde_json::json!({ "point": 5, "t": 1 }),
        serde_json::json!({ "point": 4, "t": 2 }),
        serde_json::json!({ "point": 5, "t": 3 }),
    ];
    let r = records_of(&results, &traces);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].trace, [traces[1].clone()]);
    assert_eq!(r[1].trace, [traces[0].clone(), traces[2].clone()]);
    let map: BTreeMap<u32, Record> = r.into_iter().map(|r| (r.id, r)).collect();
    let (res, tr) = results_of(&map);
    assert_eq!(res, results);
    // In point order.
    assert_eq!(tr, [traces[1].clone(), traces[0].clone(), traces[2].clone()]);
}

#[test]
fn a_run_folder_holds_the_files_and_provenance_and_a_resume_is_added() {
    let root = root();
    let tmp = scratch("folder");
    let base = tmp.path().to_path_buf();
    let file = root.join("experiments/default.toml");
    let l = experiment::load(&file, &root).unwrap();
    let run = Run::create(&base, &root, &file, &l, Invocation::now("run", &root, None), true).unwrap();
    assert_eq!(std::fs::read(run.dir.join("experiment.toml")).unwrap(), std::fs::read(&file).unwrap());
    assert_eq!(
        std::fs::read(run.dir.join("machine.toml")).unwrap(),
        std::fs::read(root.join("qemu/default.toml")).unwrap()
    );
    let p = provenance(&run.dir).unwrap();
    assert_eq!(
        (p.experiment.as_str(), p.machine.as_str(), p.on_host, p.points),
        ("default", "qemu/default.toml", true, 12)
    );
    assert_eq!(p.points_hash, points_hash(&l));
    assert_eq!(p.seeds, [1]);
    assert_eq!(p.started.action, "run");
    assert!(p.started.command.starts_with("cargo xtask"), "{}", p.started.command);
    assert!(p.started.date.ends_with('Z') && p.started.date.len() == 20, "{}", p.started.date);
    assert!(p.started.rustc.starts_with("rustc "), "{}", p.started.rustc);
    assert!(!p.started.git_revision.is_empty());
    // The dirty state (this is a git checkout), and the xtask's and QEMU's versions (or why not).
    assert!(p.started.git_dirty.is_some(), "{:?}", p.started);
    assert_eq!(p.started.xtask, env!("CARGO_PKG_VERSION"));
    assert!(!p.started.qemu.is_empty());
    let text = std::fs::read_to_string(run.dir.join("provenance.toml")).unwrap();
    for key in ["git_revision = ", "git_dirty = ", "command = ", "xtask = ", "rustc = ", "qemu = ", "seeds = "] {
        assert!(text.contains(key), "{key} not in\n{text}");
    }
    assert!(p.resumed.is_empty());
    drop(run);
    let dir = base.join(LATEST);
    check_machine(&dir, &root, &l).unwrap();
    check_points(&dir, &l, &p).unwrap();
    let _again = Run::reopen(&dir, Invocation::now("resume", &root, Some(Shard { index: 1, count: 2 }))).unwrap();
    let q = provenance(&dir).unwrap();
    assert_eq!(q.started, p.started);
    assert_eq!(q.resumed.len(), 1);
    assert_eq!((q.resumed[0].action.as_str(), q.resumed[0].shard.as_deref()), ("resume", Some("1/2")));
    // Other points than the run's are refused, naming both.
    let mut other = experiment::load(&file, &root).unwrap();
    other.points.pop();
    let e = check_points(&dir, &other, &q).unwrap_err();
    assert!(e.contains("11 points") && e.contains("12 points"), "{e}");
    // So is another machine file.
    std::fs::write(dir.join("machine.toml"), "cpus = 1\n").unwrap();
    let e = check_machine(&dir, &root, &l).unwrap_err();
    assert!(e.contains("qemu/default.toml changed"), "{e}");
}

#[test]
fn a_run_folder_is_found_by_path_or_under_target_experiments() {
    let tmp = scratch("resolve");
    let root = tmp.path().to_path_buf();
    let run = root.join("target/experiments/x/2026-01-01T00-00-00Z");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("provenance.toml"), "").unwrap();
    std::os::unix::fs::symlink("2026-01-01T00-00-00Z", root.join("target/experiments/x/latest")).unwrap();
    assert_eq!(resolve(&root, "x/latest").unwrap(), run.canonicalize().unwrap());
    assert_eq!(resolve(&root, &run.display().to_string()).unwrap(), run.canonicalize().unwrap());
    let e = resolve(&root, "y/latest").unwrap_err();
    assert!(e.contains("not a run folder") && e.contains("x/latest"), "{e}");
}

/// A file written through write_atomic: its text, the mode `std::fs::write` gives (not
/// tempfile's 0600), a second write replacing it, and no temporary file left beside it.
#[test]
fn an_atomic_write_replaces_the_file_and_leaves_nothing_else() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = scratch("atomic");
    let dir = tmp.path();
    std::fs::write(dir.join("plain"), "x").unwrap();
    write_atomic(dir, "results.csv", b"one").unwrap();
    write_atomic(dir, "results.csv", b"two").unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("results.csv")).unwrap(), "two");
    let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("results.csv"), mode("plain"));
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["plain", "results.csv"]);
    assert!(write_atomic(&dir.join("missing"), "x", b"").unwrap_err().contains("missing/x"));
}
