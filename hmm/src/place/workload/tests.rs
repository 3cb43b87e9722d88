use super::*;
use crate::place::params::Value;

fn setup(pages: u32) -> Setup {
    Setup { pages, device: Target::Dev(0), devices: 2, seed: 7, iterations: 0 }
}

fn drain(w: &mut dyn Workload) -> Vec<Vec<Phase>> {
    let mut steps = Vec::new();
    while let Some(s) = w.next_step() {
        steps.push(s);
        assert!(steps.len() < 100_000, "{} never ends", w.name());
    }
    steps
}

#[test]
fn every_workload_stays_in_its_footprint_and_fills_it() {
    for d in ALL {
        let mut w = build(d.name, &Params::new().checked(d.params).unwrap(), &setup(1000)).unwrap();
        let pages = w.pages();
        assert!((700..=1000).contains(&pages), "{}: {pages} pages for a footprint of 1000", d.name);
        let steps = drain(&mut *w);
        assert!(!steps.is_empty(), "{}", d.name);
        let mut touched = alloc::vec![false; pages as usize];
        for a in steps.iter().flatten().flat_map(|p| &p.accesses) {
            assert!(a.page < pages, "{}: page {} of {pages}", d.name, a.page);
            assert!(a.lines > 0);
            touched[a.page as usize] = true;
        }
        let n = touched.iter().filter(|&&t| t).count();
        assert!(n * 2 > pages as usize, "{}: touches only {n} of {pages} pages", d.name);
    }
}

#[test]
fn generators_are_deterministic() {
    for d in ALL {
        let p = Params::new().checked(d.params).unwrap();
        let a = drain(&mut *build(d.name, &p, &setup(300)).unwrap());
        let b = drain(&mut *build(d.name, &p, &setup(300)).unwrap());
        let flat = |s: &Vec<Vec<Phase>>| s.iter().flatten().flat_map(|p| p.accesses.clone()).collect::<Vec<_>>();
        assert_eq!(flat(&a), flat(&b), "{}", d.name);
    }
}

#[test]
fn multi_device_workloads_use_every_device() {
    let mut w = build("halo", &Params::new(), &setup(600)).unwrap();
    let step = w.next_step().unwrap();
    assert_eq!(step.iter().map(|p| p.on).collect::<Vec<_>>(), [Target::Dev(0), Target::Dev(1)]);
    let mut w = build("pingpong", &Params::new().checked(pingpong::PINGPONG.params).unwrap(), &setup(64)).unwrap();
    let on: Vec<Target> = drain(&mut *w).iter().map(|s| s[0].on).collect();
    assert_eq!(&on[..3], [Target::Dev(0), Target::Cpu, Target::Dev(0)]);
}

#[test]
fn parameters_are_checked() {
    let mut p = Params::new();
    p.set("oversubscription", Value::Float(1.5));
    p.set("stride", Value::Text("2M+4K".into()));
    let (c, own) = check("strided", &p).unwrap();
    assert_eq!(footprint(&c, 1000), 1500);
    assert_eq!(own.text("stride"), "2M+4K");
    p.set("stride", Value::Text("3K".into()));
    assert!(check("strided", &p).unwrap_err().to_string().contains("one of 4K, 64K, 2M+4K"));
    let mut p = Params::new();
    p.set("strid", Value::Int(1));
    let e = check("strided", &p).unwrap_err().to_string();
    assert!(e.contains("unknown parameter `strid`; allowed: stride, oversubscription"), "{e}");
    assert!(check("nope", &Params::new()).unwrap_err().to_string().contains("known: stream, strided"));
    let s = Setup { device: Target::Dev(3), ..setup(10) };
    assert!(build("stream", &Params::new(), &s).unwrap_err().to_string().contains("it has 2"));
    let mut peer = Params::new();
    peer.set("peer", Value::Bool(true));
    let one = Setup { devices: 1, ..setup(10) };
    let own = peer.checked(pingpong::PINGPONG.params).unwrap();
    assert!(build("pingpong", &own, &one).is_err());
}

#[test]
fn emit_merges_lines_per_page() {
    let mut e = Emit::default();
    e.range(4000, 300, false);
    e.line(4096 + 128, true);
    assert_eq!(e.out, [Access { page: 0, write: false, lines: 1 }, Access { page: 1, write: true, lines: 3 }]);
}
