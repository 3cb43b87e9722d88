//! The HMM stack as the engine's mechanism: what a policy decides is seen in the device MMUs,
//! the device allocator and the data.

use super::*;
use crate::devmmu::Where;
use crate::place::Loc;
use crate::place::cost::CostModel;
use crate::place::engine::DataFault;
use crate::place::engine::tests::{policy, stack, wl};
use crate::place::engine::{Config, Engine, Outcome, layout};
use crate::place::params::Value;
use crate::place::workload::Target;

/// Runs one workload of `pages` pages on device 0 (of `cap` pages) under `pol`.
fn run(m: &mut HostStack, kind: &str, pages: u32, cap: u32, pol: Box<dyn crate::place::policy::Policy>) -> Outcome {
    let (bases, total) = layout(&[pages]);
    assert_eq!(total, m.pages());
    let mut e = Engine::new(total, &[cap], CostModel::default(), pol, m, Config::default());
    e.add(wl(kind, pages, Target::Dev(0), &[]), bases[0]);
    let o = e.run().unwrap();
    assert!(o.workloads.iter().all(|w| w.error.is_none()), "{:?}", o.workloads);
    o
}

/// Device 0's MMU maps `p` in RAM where the CPU page table has it, and the domain maps it too.
fn mapped_in_ram(m: &HostStack, p: u32) -> bool {
    let (loc, pa) = m.locate(p).unwrap();
    let in_domain = m.mirror(0).unwrap().with_domain(|d| d.lookup(BASE + p as u64 * PAGE));
    loc == Loc::Cpu
        && matches!(m.translate(0, p), Some(t) if t.at == Where::Ram(pa))
        && in_domain.is_some_and(|(phys, _)| phys == pa)
}

#[test]
fn a_policy_that_never_migrates_makes_the_device_map_remotely() {
    // P0 advice: preferred location the CPU, the device in accessed-by: every device fault
    // maps the page where it is.
    let pol =
        policy("advice", &[("preferred", Value::Text("cpu".into())), ("accessed_by", Value::Bool(true))], "lru4k");
    let mut m = stack(512, &[256]);
    let o = run(&mut m, "stream", 512, 256, pol);
    assert_eq!((o.stats.to_dev, o.stats.evicted), (0, 0), "{:?}", o.stats);
    assert!(o.stats.remote_lines > 0 && o.stats.remote_maps > 0, "{:?}", o.stats);
    assert_eq!(o.stats.local_lines, 0);
    // Seen in the device MMU: every page the stream touched (all but its last two) is mapped
    // in RAM, where the CPU page table has it, and in the IOMMU domain.
    let mapped: Vec<u32> = (0..512).filter(|&p| mapped_in_ram(&m, p)).collect();
    assert_eq!(mapped, (0..510).collect::<Vec<u32>>());
    assert_eq!(o.stats.remote_maps, 510);
    assert_eq!(m.device(0).unwrap().pages_in_use(), 0);
    assert_eq!(m.mirror(0).unwrap().with_domain(|d| d.len()), 510);
}

#[test]
fn migrate_on_touch_moves_the_pages_and_the_device_mmu_maps_them_locally() {
    let mut m = stack(512, &[1024]);
    let o = run(&mut m, "stream", 512, 1024, policy("on-touch", &[], "lru4k"));
    assert!(o.stats.to_dev == 510 && o.stats.local_lines > 0, "{:?}", o.stats);
    assert_eq!(o.stats.remote_lines, 0, "{:?}", o.stats);
    let mut on_dev = 0;
    for p in 0..512 {
        let (loc, pa) = m.locate(p).unwrap();
        if loc != Loc::Dev(0) {
            continue;
        }
        on_dev += 1;
        // The device reaches it in its own memory: a device-private frame of its owner, whose
        // storage is where the CPU page table's entry says the data is.
        let Some(Translation { at: Where::Local(pfn), write: true }) = m.translate(0, p) else {
            panic!("page {p} on dev0, but its MMU has {:?}", m.translate(0, p));
        };
        assert_eq!(m.storage(0, pfn).unwrap(), pa);
    }
    assert_eq!(on_dev, 510, "the stream's pages stay on the device that is big enough");
    assert_eq!(m.device(0).unwrap().pages_in_use(), 510);
    // Local pages are not in the IOMMU domain (the device reaches them without it).
    assert_eq!(m.mirror(0).unwrap().with_domain(|d| d.len()), 0);
}

#[test]
fn oversubscribed_device_memory_evicts_and_keeps_the_data() {
    let n = 256;
    let mut m = stack(2 * n, &[n]);
    let o = run(&mut m, "stream", 2 * n, n, policy("tree", &[], "lru4k"));
    // The run's end checked every page's data; the device never held more than it has.
    assert!(o.stats.evicted > 0 && o.stats.to_cpu > 0, "{:?}", o.stats);
    assert!(m.device(0).unwrap().pages_in_use() <= n as u64);
    assert!(m.device_pages_used(0).unwrap() <= n as u64);
    m.finish().unwrap();
}

#[test]
fn the_device_allocator_refuses_past_the_capacity() {
    let mut m = stack(8, &[4]);
    // The fifth page stays in RAM; the engine reads back what arrived.
    m.migrate(0, 5, Loc::Cpu, Loc::Dev(0)).unwrap();
    assert_eq!(m.device(0).unwrap().pages_in_use(), 4);
    let at: Vec<Loc> = (0..5).map(|p| m.resident(p).unwrap()).collect();
    assert_eq!(at, [Loc::Dev(0), Loc::Dev(0), Loc::Dev(0), Loc::Dev(0), Loc::Cpu]);
    // A read copy is device memory too.
    let e = m.duplicate(6, 1, Loc::Cpu, 0).unwrap_err();
    assert!(matches!(e, MechError::Device { op: DeviceOp::ReadCopies { first: 6, pages: 1, dev: 0 }, .. }), "{e:?}");
    m.migrate(0, 2, Loc::Dev(0), Loc::Cpu).unwrap();
    m.duplicate(6, 1, Loc::Cpu, 0).unwrap();
    assert_eq!(m.device_pages_used(0), Some(3));
    m.finish().unwrap();
}

#[test]
fn data_corrupted_behind_the_stack_fails_the_check() {
    let mut m = stack(512, &[256]);
    run(&mut m, "stream", 512, 256, policy("on-touch", &[], "lru4k"));
    m.finish().unwrap();
    // A page in RAM gets another page's identity word.
    let p = (0..512).find(|&p| m.locate(p).unwrap().0 == Loc::Cpu).unwrap();
    let (_, pa) = m.locate(p).unwrap();
    m.platform().write(pa + 8, &(7u64 ^ MAGIC).to_le_bytes());
    assert_eq!(m.finish().unwrap_err(), MechError::Data { page: p, copy: None, fault: DataFault::OtherPage(7) });
    let mut id = [0u8; 8];
    id.copy_from_slice(&(p as u64 ^ MAGIC).to_le_bytes());
    m.platform().write(pa + 8, &id);
    m.finish().unwrap();
    // A page in device memory loses a write.
    let q = (0..512).find(|&p| m.locate(p).unwrap().0 == Loc::Dev(0)).unwrap();
    let (_, qa) = m.locate(q).unwrap();
    let mut w = [0u8; 8];
    m.platform().read(qa, &mut w);
    let made = u64::from_le_bytes(w);
    assert!(made > 0, "the stream wrote page {q}");
    m.platform().write(qa, &(made - 1).to_le_bytes());
    let e = m.finish().unwrap_err();
    assert_eq!(
        e,
        MechError::Data { page: q, copy: None, fault: DataFault::Writes { found: made - 1, made: made as u32 } }
    );
}

#[test]
fn a_cpu_access_goes_through_the_page_tables() {
    let mut m = stack(4, &[4]);
    m.migrate(1, 1, Loc::Cpu, Loc::Dev(0)).unwrap();
    assert_eq!(m.resident(1).unwrap(), Loc::Dev(0));
    // The engine would have to bring it back first; the stack refuses an access where the page
    // is not.
    let e = m.access(Loc::Cpu, Loc::Cpu, 1, true).unwrap_err();
    assert_eq!(
        e,
        MechError::Misplaced { page: 1, op: PageOp::Access(Loc::Cpu), expected: Loc::Cpu, found: Loc::Dev(0) }
    );
    m.access(Loc::Dev(0), Loc::Dev(0), 1, true).unwrap();
    m.access(Loc::Cpu, Loc::Cpu, 2, true).unwrap();
    // The CPU's write is in the page, read back through the address space.
    let mut w = [0u8; 16];
    m.space().lock().read(BASE + 2 * PAGE, &mut w).unwrap();
    assert_eq!(u64::from_le_bytes(w[..8].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(w[8..].try_into().unwrap()), 2 ^ MAGIC);
    // A migration back brings the device's write with it.
    m.migrate(1, 1, Loc::Dev(0), Loc::Cpu).unwrap();
    m.space().lock().read(BASE + PAGE, &mut w).unwrap();
    assert_eq!(u64::from_le_bytes(w[..8].try_into().unwrap()), 1);
    m.finish().unwrap();
}

#[test]
fn peer_mappings_reach_another_devices_memory_and_go_when_the_page_moves() {
    let mut m = stack(4, &[4, 4]);
    m.migrate(0, 2, Loc::Cpu, Loc::Dev(0)).unwrap();
    assert_eq!(m.device_translate(1, 0, false).unwrap(), None);
    m.map_remote(0, 2, 1, false).unwrap();
    assert_eq!(m.device_translate(1, 0, true).unwrap(), Some(Loc::Dev(0)));
    m.access(Loc::Dev(1), Loc::Dev(0), 0, true).unwrap();
    // Device to device (through RAM): the peer mapping goes, the new owner maps it locally.
    m.migrate(0, 2, Loc::Dev(0), Loc::Dev(1)).unwrap();
    assert_eq!(m.device_translate(1, 0, true).unwrap(), Some(Loc::Dev(1)));
    assert_eq!(m.device_translate(0, 0, false).unwrap(), None);
    assert_eq!((m.device(0).unwrap().pages_in_use(), m.device(1).unwrap().pages_in_use()), (0, 2));
    m.finish().unwrap();
}

#[test]
fn the_teardown_leaves_the_machine_as_it_found_it() {
    // Pages on both devices, read copies, peer and remote mappings outstanding.
    let mut m = stack(1024, &[256, 256]);
    let (bases, pages) = layout(&[300, 300]);
    assert_eq!(pages, 1024);
    {
        let mut e = Engine::new(
            pages,
            &[256, 256],
            CostModel::default(),
            policy("duplicate", &[], "lru4k"),
            &mut m,
            Config::default(),
        );
        e.add(wl("broadcast", 300, Target::Dev(0), &[("writes", Value::Float(0.0))]), bases[0]);
        e.add(wl("stream", 300, Target::Dev(1), &[]), bases[1]);
        let o = e.run().unwrap();
        assert!(o.stats.duplicates > 0 && o.stats.to_dev > 0, "{:?}", o.stats);
    }
    m.map_remote(0, 8, 1, false).unwrap();
    assert!(m.device_pages_used(0).unwrap() > 0 && m.device_pages_used(1).unwrap() > 0);
    let machine = m.into_machine().unwrap();
    assert!(machine.idle(), "free frames {} of {}", machine.platform.free_frames(), machine.idle_free);
    // A machine comes back idle after a run that stopped half way too.
    let mut m = stack(16, &[4]);
    m.migrate(0, 2, Loc::Cpu, Loc::Dev(0)).unwrap();
    m.duplicate(4, 1, Loc::Cpu, 0).unwrap();
    // Room for one more page: a move of three takes one.
    m.migrate(5, 3, Loc::Cpu, Loc::Dev(0)).unwrap();
    assert_eq!((5..8).map(|p| m.resident(p).unwrap()).collect::<Vec<_>>(), [Loc::Dev(0), Loc::Cpu, Loc::Cpu]);
    assert!(m.migrate(0, 4, Loc::Cpu, Loc::Dev(0)).is_err());
    assert!(m.into_machine().unwrap().idle());
}

#[test]
fn a_remote_mapping_made_ahead_serves_reads_and_lets_writes_fault() {
    let mut m = stack(8, &[8]);
    // Writable in the CPU page tables, yet mapped for reads only.
    m.map_remote(0, 8, 0, true).unwrap();
    for p in 0..8 {
        assert_eq!(m.device_translate(0, p, false).unwrap(), Some(Loc::Cpu), "page {p} read");
        assert_eq!(m.device_translate(0, p, true).unwrap(), None, "page {p}: a write must fault");
    }
    // The write fault's service maps it writable; the others stay read-only.
    m.map_remote(3, 1, 0, false).unwrap();
    assert_eq!(m.device_translate(0, 3, true).unwrap(), Some(Loc::Cpu));
    assert_eq!(m.device_translate(0, 4, true).unwrap(), None);
    // A page in the device's own memory keeps its write access.
    m.migrate(5, 1, Loc::Cpu, Loc::Dev(0)).unwrap();
    m.map_remote(0, 8, 0, true).unwrap();
    assert_eq!(m.device_translate(0, 5, true).unwrap(), Some(Loc::Dev(0)));
}
