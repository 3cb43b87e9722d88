use super::*;
use crate::place::params::Value;

fn setup(pages: u32) -> Setup {
    Setup { pages, device: Target::Dev(0), devices: 2, seed: 7, iterations: 0, alloc: super::Alloc::Pages }
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

/// Under UVMSmart's allocation every workload keeps its accesses inside its allocations (never
/// in a hole after one, where policies move nothing) and allocates at least what it touches.
#[test]
fn under_uvmsmart_allocation_no_workload_touches_a_hole() {
    for d in ALL {
        let s = Setup { alloc: Alloc::Uvmsmart, ..setup(1000) };
        let mut w = build(d.name, &Params::new().checked(d.params).unwrap(), &s).unwrap();
        let (pages, extents) = (w.pages(), w.extents());
        let mut st = crate::place::state::State::new(pages, &[]);
        for &(first, n) in &extents {
            assert_eq!(first % crate::place::BLOCK, 0, "{}: a rest starts a block", d.name);
            st.set_extent(first / crate::place::BLOCK, n);
        }
        let mut touched = 0;
        let mut seen = alloc::vec![false; pages as usize];
        for a in drain(&mut *w).iter().flatten().flat_map(|p| &p.accesses) {
            assert!(a.page < pages && st.in_extent(a.page), "{}: page {} is in a hole", d.name, a.page);
            touched += u32::from(!core::mem::replace(&mut seen[a.page as usize], true));
        }
        assert!(w.allocated_pages() >= touched, "{}: {touched} touched, {} allocated", d.name, w.allocated_pages());
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

/// Distinct pages a step's phases touch, and how many of its accesses write.
fn touched(step: &[Phase]) -> (usize, usize) {
    let mut pages: Vec<u32> = step.iter().flat_map(|p| p.accesses.iter().map(|a| a.page)).collect();
    let writes = step.iter().flat_map(|p| &p.accesses).filter(|a| a.write).count();
    pages.sort_unstable();
    pages.dedup();
    (pages.len(), writes)
}

fn own(kind: &str, set: &[(&str, Value)]) -> Params {
    let mut p = Params::new();
    for (k, v) in set {
        p.set(k, v.clone());
    }
    p.checked(find(kind).unwrap().params).unwrap()
}

#[test]
fn bfs_is_rodinia_over_a_uniform_random_graph_by_default() {
    // Rodinia's graphgen: vertex 0 has 2-4 edges of its own plus a few back-edges, so the
    // first level writes a handful of lines; from an R-MAT hub it writes thousands.
    let mut w = build("bfs", &own("bfs", &[]), &setup(1000)).unwrap();
    let steps = drain(&mut *w);
    let (_, first_writes) = touched(&steps[0]);
    assert!(first_writes < 60, "level 0 wrote {first_writes} runs of lines");
    // Levels grow by about the degree: a uniform graph of ~10^5 vertices is done in few levels.
    assert!((5..=20).contains(&steps.len()), "{} levels", steps.len());
    let mut rmat = build("bfs", &own("bfs", &[("graph", Value::Text("rmat".into()))]), &setup(1000)).unwrap();
    let (_, hub_writes) = touched(&rmat.next_step().unwrap());
    assert!(hub_writes > 200, "the R-MAT hub's level wrote only {hub_writes} runs");
}

#[test]
fn graph_arrays_follow_the_benchmarks() {
    let s = setup(1000);
    // bfs: 8-byte nodes, three flag bytes, a 4-byte cost and 4-byte edges, no payload.
    let g = graph::Graph::new(&own("bfs", &[]), &s, graph::For::Bfs);
    let m = g.edges.len() as f64;
    assert!((m / g.n as f64 - 6.0).abs() < 0.1, "average degree {}", m / g.n as f64);
    let bytes = g.n as f64 * 15.0 + m * 4.0;
    assert!(bytes > 0.98 * 1000.0 * 4096.0 - 7.0 * 4096.0, "{bytes} bytes of arrays");
    assert!(g.layout.data_pages() <= 1000);
    let max = (0..g.n).map(|v| g.out(v).len()).max().unwrap();
    assert!(max < 40, "a uniform graph has no hub (max degree {max})");
    assert_eq!(g.source(), 0);
    // sssp: exactly two distinct out-edges per vertex, never to itself.
    let g = graph::Graph::new(&own("sssp", &[]), &s, graph::For::Sssp);
    for v in 0..g.n {
        let r = g.out(v);
        assert_eq!(r.len(), 2, "vertex {v}");
        let (a, b) = (g.edges[r.start], g.edges[r.start + 1]);
        assert!(a != b && a != v && b != v, "vertex {v}: {a}, {b}");
    }
    assert!(g.weights.iter().all(|&w| w < 1000));
    // 4-byte offsets, two 4-byte edge arrays, two 4-byte distance arrays: 28 bytes a vertex.
    assert!(g.n as u64 * 28 > 990 * 4096 - 5 * 4096, "{} vertices", g.n);
}

#[test]
fn sssp_sweeps_both_distance_arrays_for_at_most_15_iterations() {
    let mut w = build("sssp", &own("sssp", &[]), &setup(1000)).unwrap();
    let pages = w.pages() as usize;
    let steps = drain(&mut *w);
    // initializeArrays, then 15 iterations (2^15 vertices are not all reached by then).
    assert_eq!(steps.len(), 16);
    for (i, s) in steps.iter().enumerate() {
        // The distance arrays are 8 of the 28 bytes a vertex.
        let (n, writes) = touched(s);
        assert!(n * 100 >= pages * 28, "step {i} touched {n} of {pages} pages");
        assert!(writes * 100 >= pages * 14, "step {i} wrote {writes} runs");
    }
    // The former frontier-only kernel 2 is still there.
    let mut w = build("sssp", &own("sssp", &[("sweep", Value::Bool(false))]), &setup(1000)).unwrap();
    let steps = drain(&mut *w);
    let (n, _) = touched(&steps[1]);
    assert!(n < 20, "the first frontier-only iteration touched {n} pages");
    // `iterations` caps it.
    let s = Setup { iterations: 3, ..setup(1000) };
    assert_eq!(drain(&mut *build("sssp", &own("sssp", &[]), &s).unwrap()).len(), 4);
}

/// The set of pages a phase list touches (`writes`: only those written).
fn page_set(phases: &[Phase], writes: bool) -> alloc::collections::BTreeSet<u32> {
    phases.iter().flat_map(|p| &p.accesses).filter(|a| a.write || !writes).map(|a| a.page).collect()
}

#[test]
fn fdtd_runs_five_time_steps_of_three_sweeps() {
    let mut w = build("fdtd", &Params::new(), &setup(1000)).unwrap();
    let pages = w.pages() as usize;
    let steps = drain(&mut *w);
    // fdtd2d.cu: tmax = 5, three kernels per time step.
    assert_eq!(steps.len(), 15);
    let names: Vec<&str> = steps.iter().map(|s| s[0].name).collect();
    assert_eq!(&names[..3], ["fdtd-ey", "fdtd-ex", "fdtd-hz"]);
    // Each kernel updates one field (a third of the footprint) and reads the others it needs.
    let written: Vec<_> = steps[..3].iter().map(|s| page_set(s, true)).collect();
    for (k, set) in written.iter().enumerate() {
        assert!(set.len() * 100 > pages * 30 && set.len() * 100 < pages * 36, "kernel {k} wrote {}", set.len());
    }
    assert!(written[0].is_disjoint(&written[1]) && written[1].is_disjoint(&written[2]));
    // The hz kernel reads ex and ey: all three fields.
    assert!(page_set(&steps[2], false).len() * 100 > pages * 98);
}

#[test]
fn hotspot_walks_bands_of_pyramid_tiles_between_ping_pong_grids() {
    let mut w = build("hotspot", &own("hotspot", &[]), &setup(1000)).unwrap();
    let pages = w.pages() as usize;
    let steps = drain(&mut *w);
    // hotspot 1024 2 8: 8 time steps, 2 per launch.
    assert_eq!(steps.len(), 4);
    let (w0, w1) = (page_set(&steps[0], true), page_set(&steps[1], true));
    assert!(w0.is_disjoint(&w1), "launches alternate their destination grid");
    assert!(w0.len() * 100 > pages * 32, "a launch writes a whole grid ({} pages)", w0.len());
    // The first band's blocks load 14 rows (16 less the top border) of temperature and power
    // before any block writes its 12 × 12 cells: in index order, with no write between.
    let first = &steps[0][0].accesses;
    let before: alloc::collections::BTreeSet<u32> = first.iter().take_while(|a| !a.write).map(|a| a.page).collect();
    let row_pages = (pages / 3) as f64 / ((pages / 3 * 4096 / 4) as f64).sqrt();
    assert!(before.len() as f64 >= 2.0 * 13.0 * row_pages, "{} pages read before the first write", before.len());
    // Each launch still sweeps the whole footprint: the source does.
    for s in &steps {
        assert!(page_set(s, false).len() * 100 > pages * 98);
    }
    let p = own("hotspot", &[("pyramid", Value::Int(4))]);
    assert_eq!(drain(&mut *build("hotspot", &p, &setup(1000)).unwrap()).len(), 2);
}

/// The artifact's input, `hotspot 1024`, is three 4 MiB float grids: 3072 pages hold exactly
/// those (each grid two whole 2 MiB blocks), and a page less holds side 1023.
#[test]
fn hotspot_grids_are_the_largest_that_fit() {
    let grids = |pages: u32| {
        let mut w = build("hotspot", &own("hotspot", &[]), &setup(pages)).unwrap();
        let used = w.pages();
        let steps = drain(&mut *w);
        (used, page_set(&steps[0], true).len())
    };
    assert_eq!(grids(3072), (3072, 1024));
    let (used, written) = grids(3071);
    assert!(used <= 3071 && written == (1023 * 1023 * 4usize).div_ceil(4096), "{used} {written}");
}

#[test]
fn backprop_updates_a_copy_of_the_weights_the_forward_pass_streamed() {
    let mut w = build("backprop", &own("backprop", &[("host", Value::Bool(true))]), &setup(1000)).unwrap();
    let pages = w.pages() as usize;
    let steps = drain(&mut *w);
    let on: Vec<Target> = steps.iter().map(|s| s[0].on).collect();
    assert_eq!(on, [Target::Dev(0), Target::Cpu, Target::Dev(0)], "forward, CPU reduction, backward");
    // By default the kernels only, as GPGPU-Sim sees the run.
    let kernels = drain(&mut *build("backprop", &own("backprop", &[]), &setup(1000)).unwrap());
    assert_eq!(kernels.len(), 2);
    assert_eq!(kernels[1][0].accesses, steps[2][0].accesses);
    let forward = page_set(&steps[0], false);
    let backward = page_set(&steps[2], false);
    // The forward pass streams a third of the footprint, the backward two thirds...
    assert!(forward.len() * 100 > pages * 32 && backward.len() * 100 > pages * 64);
    // ... and re-reads only the inputs (4 of 212 bytes an input unit) and the first weight row.
    let again = forward.intersection(&backward).count();
    assert!(again * 100 < pages * 3, "the backward pass re-reads {again} of the forward pass's pages");
}

#[test]
fn uvm_microbenchmarks_read_in_their_orders() {
    let s = setup(1000);
    // grid-stride: one sweep in index order, whole pages, then element 0 written.
    let mut w = build("grid-stride", &own("grid-stride", &[]), &s).unwrap();
    let a = drain(&mut *w).remove(0).remove(0).accesses;
    let (last, reads) = a.split_last().unwrap();
    assert!(last.write && last.page == 0);
    assert_eq!(reads.len(), 1000);
    assert!(reads.iter().enumerate().all(|(i, x)| x.page == i as u32 && x.lines == 32 && !x.write));
    // block-stride: a round touches one place per block, spread evenly over the array.
    let p = own("block-stride", &[("blocks", Value::Int(100))]);
    let a = drain(&mut *build("block-stride", &p, &s).unwrap()).remove(0).remove(0).accesses;
    let round: Vec<u32> = a[..100].iter().map(|x| x.page).collect();
    assert!(round.windows(2).all(|w| (9..=11).contains(&(w[1] - w[0]))), "{round:?}");
    // 512 bytes a block, from a share's start that need not be line-aligned.
    assert!(a[..100].iter().all(|x| (4..=5).contains(&x.lines)));
    let mut read = alloc::vec![0u32; 1000];
    for x in a.iter().filter(|x| !x.write) {
        read[x.page as usize] += x.lines as u32;
    }
    let bad: Vec<(usize, u32)> = read.iter().copied().enumerate().filter(|&(_, l)| !(32..=41).contains(&l)).collect();
    assert!(bad.is_empty(), "every line read once (or twice at a run edge): {bad:?}");
    // random-warp: 128 bytes at a time anywhere, the array's size in all.
    let a = drain(&mut *build("random-warp", &own("random-warp", &[]), &s).unwrap()).remove(0).remove(0).accesses;
    let lines: u64 = a.iter().map(|x| x.lines as u64).sum();
    assert!((32_000..64_000).contains(&lines), "{lines} lines");
    let spread: alloc::collections::BTreeSet<u32> = a.iter().map(|x| x.page).collect();
    assert!(spread.len() > 900, "{} pages", spread.len());
    assert!(a.windows(2).filter(|w| w[1].page < w[0].page).count() > a.len() / 3, "not in order");
}

#[test]
fn srad_reads_the_region_on_the_cpu_and_runs_two_kernels() {
    let mut w = build("srad", &own("srad", &[("host", Value::Bool(true))]), &setup(1000)).unwrap();
    let pages = w.pages() as usize;
    let steps = drain(&mut *w);
    assert_eq!(steps.len(), 6, "2 iterations of CPU statistics and two kernels");
    let kernels = drain(&mut *build("srad", &own("srad", &[]), &setup(1000)).unwrap());
    assert_eq!(kernels.len(), 4, "by default the kernels only");
    assert_eq!(kernels[3][0].accesses, steps[5][0].accesses);
    assert_eq!(steps[0][0].on, Target::Cpu);
    // The 128 × 128 region: 128 rows of 512 bytes.
    assert!(page_set(&steps[0], false).len() <= 129);
    // Only J is managed: kernel 1 reads it, kernel 2 rewrites it.
    assert!(page_set(&steps[1], true).is_empty());
    assert!(page_set(&steps[2], true).len() * 100 > pages * 98);
    // With managed coefficients kernel 1 writes five of the six arrays.
    let p = own("srad", &[("coefficients", Value::Text("managed".into()))]);
    let mut w = build("srad", &p, &setup(1000)).unwrap();
    let pages = w.pages() as usize;
    let steps = drain(&mut *w);
    let k1 = page_set(&steps[0], true).len();
    assert!(k1 * 6 > pages * 49 / 10 && k1 * 6 < pages * 51 / 10, "{k1} of {pages}");
}

#[test]
fn pathfinder_reads_each_wall_row_in_one_launch() {
    let mut w = build("pathfinder", &own("pathfinder", &[]), &setup(1000)).unwrap();
    let pages = w.pages() as usize;
    let steps = drain(&mut *w);
    // 99 wall rows, 20 per launch.
    assert_eq!(steps.len(), 5);
    let sets: Vec<_> = steps.iter().map(|s| page_set(s, false)).collect();
    let shared = sets[0].intersection(&sets[1]).count();
    // Launches share the two result rows (and a page where wall rows meet), nothing else.
    assert!(shared * 100 < pages * 3, "{shared} pages shared");
    let all: alloc::collections::BTreeSet<u32> = sets.iter().flatten().copied().collect();
    assert!(all.len() * 100 > pages * 98);
    // A launch streams its rows side by side: the first block already touches 20 wall rows.
    let first: alloc::collections::BTreeSet<u32> = steps[0][0].accesses[..22].iter().map(|a| a.page).collect();
    assert!(first.len() >= 20, "{first:?}");
}

#[test]
fn uvmsmart_rounds_as_its_cuda_malloc_managed_does() {
    const K: u64 = 1024;
    const M: u64 = 1024 * K;
    // Whole 2 MiB pages, then the rest as a power of two from 64 KiB.
    for (bytes, want) in [
        (0, 0),
        (20, 64 * K),
        (64 * K + 1, 128 * K),
        (261_444, 256 * K),
        (2_091_552, 2 * M),
        (2 * M, 2 * M),
        (5_764_800, 6 * M),
        (8_911_876, 8 * M + 512 * K),
    ] {
        assert_eq!(uvmsmart_size(bytes), want, "{bytes} bytes");
    }
    let mut l = Layout::new(Alloc::Uvmsmart);
    assert_eq!((l.array(20), l.array(3 * M), l.array(100)), (0, 2 * M, 6 * M));
    // 64 KiB, 3 MiB (2 MiB and a 1 MiB rest), 64 KiB, each from a 2 MiB boundary.
    assert_eq!((l.data_pages(), l.allocated_pages(), l.pages()), (1 + 768 + 1, 16 + 768 + 16, 1536 + 16));
    // Rests: 64 KiB at block 0, the 1 MiB after the first 2 MiB at block 2, 64 KiB at block 3.
    assert_eq!(l.rests(), &[(0, 16), (1024, 256), (1536, 16)][..]);
}

/// The artifact's inputs allocate what its logs' `gddr_size` × ratio says (the footprint its
/// oversubscription counts): fdtd 1200 × 1200 16.42045 MB × 1.1 = 18.0625 MiB, bfs
/// graph256k 8.86364 × 1.1 = 9.75 MiB, sssp 2^20 vertices 22.4 × 1.25 = 28 MiB, hotspot 1024
/// 9.6 × 1.25 = 12 MiB; their touched pages are what the artifact's on-demand runs fault.
#[test]
fn the_artifacts_inputs_allocate_what_its_logs_say() {
    let uvm = |pages| Setup { alloc: Alloc::Uvmsmart, ..setup(pages) };
    let own = |d: &WorkloadDef, kv: &[(&str, Value)]| {
        let mut p = Params::new();
        for (k, v) in kv {
            p.set(k, v.clone());
        }
        p.checked(d.params).unwrap()
    };
    let fdtd = build("fdtd", &own(&stencil::FDTD, &[]), &uvm(4226)).unwrap();
    assert_eq!((fdtd.allocated_pages(), fdtd.extents()), (4624, vec![(0, 16)]));
    let bfs = build("bfs", &own(&graph::BFS, &[("vertices", Value::Int(261_444))]), &uvm(100)).unwrap();
    assert_eq!(bfs.allocated_pages(), 2496);
    let sssp = build("sssp", &own(&graph::SSSP, &[("vertices", Value::Int(1 << 20))]), &uvm(100)).unwrap();
    assert_eq!((sssp.allocated_pages(), sssp.pages()), (7168, 7168));
    let hotspot = build("hotspot", &own(&stencil::HOTSPOT, &[]), &uvm(3072)).unwrap();
    assert_eq!((hotspot.allocated_pages(), hotspot.pages()), (3072, 3072));
    // Under the default, allocated is what is laid out.
    let plain = build("fdtd", &own(&stencil::FDTD, &[]), &setup(4226)).unwrap();
    assert_eq!((plain.allocated_pages(), plain.pages(), plain.extents()), (4224, 4224, vec![]));
}
