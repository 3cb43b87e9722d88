//! Several address spaces on one device (issue 27): each bound space is mirrored in a window
//! of its own in the device's domain, and what one space maps, unmaps, faults, migrates or
//! transfers never reaches another's pages.
//!
//! - [`spaces_share_a_device`]: two processes bound to dev0 at once, at the same virtual
//!   addresses; each one's DMA by virtual address reaches its own frames; a page only one of
//!   them maps is refused to the other, by its mirror and by the domain; munmap in one leaves
//!   the other's mappings; unbinding one, or another's exit, leaves the other mapped and
//!   working; the slots run
//!   out with [`DevError::Busy`], a space bound twice is [`DevError::AlreadyBound`], and an
//!   exited space frees its slot.
//! - [`two_spaces_two_devices_interleaved`]: two processes bound to both devices, with seeded
//!   interleaved device faults, migrations both ways, invalidations (mprotect, munmap and
//!   mmap again) and device reads, every page's data checked after each step.

use super::TestResult;
use crate::copyengine::Dir;
use crate::devices::{self, DevError, DevOffset};
use crate::devmmu::{self, DevMirror};
use crate::mm::{Iova, uspace};
use crate::vram;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use hmm::devmmu::MirrorError;
use hmm::mm::SharedSpace;
use hmm::mm::space::MapRequest;
use hmm::mm::vma::Prot;

const PAGE: u64 = 4096;
const PAGES: u64 = 16;

/// A process with `PAGES` pages whose every 8 bytes name the process (`seed`), the page and
/// the word, and a version the test bumps when it rewrites a page.
struct Tenant {
    space: Arc<SharedSpace>,
    a: u64,
    seed: u64,
    version: Vec<u64>,
}

impl Tenant {
    fn new(seed: u64) -> Result<Tenant, String> {
        let data: Vec<u8> = (0..PAGES).flat_map(|k| page_data(seed, 0, k)).collect();
        let (space, a) = super::process_with(PAGES * PAGE, &data)?;
        Ok(Tenant { space, a, seed, version: alloc::vec![0; PAGES as usize] })
    }

    fn page(&self, k: u64) -> Vec<u8> {
        page_data(self.seed, self.version[k as usize], k)
    }

    fn write(&self, k: u64) -> TestResult {
        let data = self.page(k);
        uspace::run(&self.space, |u| u.write(self.a + k * PAGE, &data))
            .map_err(|f| format!("tenant {}: CPU write of page {k}: {:?}", self.seed, f.error))
    }

    /// Every page, read by the CPU, is this tenant's current data.
    fn check(&self, what: &str) -> TestResult {
        let mut back = alloc::vec![0u8; PAGE as usize];
        for k in 0..PAGES {
            uspace::run(&self.space, |u| u.read(self.a + k * PAGE, &mut back))
                .map_err(|f| format!("{what}: tenant {}: CPU read of page {k}: {:?}", self.seed, f.error))?;
            check!(back == self.page(k), "{what}: tenant {}: page {k} does not hold its own data", self.seed);
        }
        Ok(())
    }
}

/// Page `k`'s data in the process `seed` names, at `version`.
fn page_data(seed: u64, version: u64, k: u64) -> Vec<u8> {
    (0..PAGE / 8).flat_map(|w| (seed << 48 | version << 32 | k << 12 | w).to_le_bytes()).collect()
}

fn base(m: &DevMirror) -> u64 {
    m.with_domain(|d| d.base)
}

/// What device `dev`'s domain maps at `iova`.
fn shadow(dev: &devices::Device, iova: u64) -> Option<u64> {
    dev.with_shadow(|s| s.translate(iova).map(|t| t.0)).flatten()
}

fn read_dev(dev: &devices::Device, off: u64) -> Result<Vec<u8>, String> {
    let mut b = alloc::vec![0u8; PAGE as usize];
    dev.read_mem(DevOffset::new(off), &mut b).map(|()| b).map_err(|e| e.to_string())
}

/// Device memory the test may scribble on: the last page of `dev`'s BAR (the allocator hands
/// out the lowest free blocks first, and the tests hold only a few pages).
fn scratch(dev: &devices::Device) -> u64 {
    dev.vram.bytes - PAGE
}

pub fn spaces_share_a_device(_s: &crate::System) -> TestResult {
    let Some(dev) = devices::all().first().filter(|d| d.mmu().is_some()) else { return Ok(()) };
    let s = |e: DevError| e.to_string();
    let (x0, x1) = (scratch(dev) - PAGE, scratch(dev));
    let (ta, tb) = (Tenant::new(0xa)?, Tenant::new(0xb)?);
    check!(ta.a == tb.a, "the two processes' ranges start at {:#x} and {:#x}; the test wants one VA", ta.a, tb.a);
    let ma = devmmu::bind(0, &ta.space).map_err(s)?;
    let mb = devmmu::bind(0, &tb.space).map_err(|e| format!("a second process on dev0: {e}"))?;
    let e = devmmu::bind(0, &ta.space);
    check!(matches!(e, Err(DevError::AlreadyBound(0))), "a second bind of one space: {e:?}");
    check!(base(&ma) != base(&mb), "two spaces in one window ({:#x})", base(&ma));
    check!(dev.mirrors_bound() >= 2, "{} mirrors bound on dev0", dev.mirrors_bound());

    // Each faults its range in: its own window maps its own frames, at the same VAs.
    let va = ta.a;
    ma.fault(va, va + PAGES * PAGE, true).map_err(|e| e.to_string())?;
    mb.fault(va, va + PAGES * PAGE, true).map_err(|e| e.to_string())?;
    for k in 0..PAGES {
        let (x, y) = (va + k * PAGE, va + k * PAGE);
        let (ca, cb) = (ta.space.lock().translate(x), tb.space.lock().translate(y));
        check!(ca.is_some() && ca != cb, "page {k}: the two processes share a frame ({ca:?})");
        check!(
            shadow(dev, base(&ma) + x) == ca,
            "page {k}: A's window maps {:?}, A's CPU {ca:?}",
            shadow(dev, base(&ma) + x)
        );
        check!(
            shadow(dev, base(&mb) + y) == cb,
            "page {k}: B's window maps {:?}, B's CPU {cb:?}",
            shadow(dev, base(&mb) + y)
        );
    }
    // DMA by virtual address through each mirror reads that process's data.
    let seg = |k: u64| [(va + k * PAGE, PAGE as u32)];
    for k in [0, 7, PAGES - 1] {
        devmmu::dma(&ma, Dir::ToDevice, DevOffset::new(x0), &seg(k)).map_err(s)?;
        devmmu::dma(&mb, Dir::ToDevice, DevOffset::new(x1), &seg(k)).map_err(s)?;
        check!(read_dev(dev, x0)? == ta.page(k), "page {k}: A's DMA did not read A's page");
        check!(read_dev(dev, x1)? == tb.page(k), "page {k}: B's DMA did not read B's page");
    }

    // A page only B maps: A's mirror refuses it, and so does the domain at A's window, while
    // B's window has it.
    let c = tb.space.lock().mmap(MapRequest::anon(PAGE, Prot::RW)).map_err(|e| e.to_string())?;
    check!(ta.space.lock().lookup(c).is_none(), "A maps B's private page's address {c:#x}");
    mb.fault(c, c + PAGE, true).map_err(|e| e.to_string())?;
    let e = devmmu::dma(&ma, Dir::ToDevice, DevOffset::new(x0), &[(c, PAGE as u32)]);
    check!(matches!(e, Err(DevError::Mirror(MirrorError::NotMapped { .. }))), "A's DMA of B's page: {e:?}");
    let e = dev.dma(Dir::ToDevice, DevOffset::new(x0), &[(Iova::new(base(&ma) + c), PAGE as u32)]);
    check!(matches!(e, Err(DevError::NotMapped { .. })), "the domain let A's window reach B's page: {e:?}");
    check!(shadow(dev, base(&mb) + c).is_some(), "B's window does not map B's page");

    // munmap in A: gone from A's window only.
    ta.space.lock().munmap(va, 4 * PAGE).map_err(|e| e.to_string())?;
    for k in 0..4 {
        check!(shadow(dev, base(&ma) + va + k * PAGE).is_none(), "page {k}: still in A's window after A's munmap");
        check!(shadow(dev, base(&mb) + va + k * PAGE).is_some(), "page {k}: B lost its mapping to A's munmap");
    }
    devmmu::dma(&mb, Dir::ToDevice, DevOffset::new(x0), &seg(0)).map_err(|e| format!("B after A's munmap: {e}"))?;
    check!(read_dev(dev, x0)? == tb.page(0), "B's page 0 after A's munmap");

    // Unbind A: its window empties; B keeps every mapping and its DMA.
    ma.unbind().map_err(|e| e.to_string())?;
    for k in 4..PAGES {
        check!(shadow(dev, base(&ma) + va + k * PAGE).is_none(), "page {k}: A's window still maps it after unbind");
    }
    for k in 0..PAGES {
        check!(shadow(dev, base(&mb) + va + k * PAGE).is_some(), "page {k}: B lost its mapping when A unbound");
    }
    devmmu::dma(&mb, Dir::ToDevice, DevOffset::new(x0), &seg(9)).map_err(|e| format!("B after A's unbind: {e}"))?;
    check!(read_dev(dev, x0)? == tb.page(9), "B's page 9 after A's unbind");
    tb.check("B at the end")?;

    // A third process exits while B runs on: its window empties with it, B keeps every
    // mapping and its DMA.
    let tc = Tenant::new(0xc)?;
    let mc = devmmu::bind(0, &tc.space).map_err(|e| format!("a third process on dev0: {e}"))?;
    mc.fault(tc.a, tc.a + PAGES * PAGE, true).map_err(|e| e.to_string())?;
    let c_base = base(&mc);
    check!(shadow(dev, c_base + tc.a).is_some(), "the third process's window does not map its page");
    drop(tc);
    check!(!mc.is_live(), "the mirror outlived its process's exit");
    for k in 0..PAGES {
        check!(shadow(dev, c_base + va + k * PAGE).is_none(), "page {k}: the exited process's window still maps it");
        check!(shadow(dev, base(&mb) + va + k * PAGE).is_some(), "page {k}: B lost its mapping to C's exit");
    }
    devmmu::dma(&mb, Dir::ToDevice, DevOffset::new(x0), &seg(3)).map_err(|e| format!("B after C's exit: {e}"))?;
    check!(read_dev(dev, x0)? == tb.page(3), "B's page 3 after C's exit");
    drop(mc);

    // The slots run out; an exited space frees its own.
    let mut more = Vec::new();
    let mut spaces = Vec::new();
    let busy = loop {
        let t = Tenant::new(0x10 + spaces.len() as u64)?;
        match devmmu::bind(0, &t.space) {
            Ok(m) => more.push(m),
            Err(e) => break e,
        }
        spaces.push(t);
        check!(
            spaces.len() <= devices::SPACES,
            "{} spaces bound to dev0, it has {} slots",
            spaces.len() + 1,
            devices::SPACES
        );
    };
    check!(matches!(busy, DevError::Busy(0)), "binding past the slots: {busy:?}");
    check!(dev.mirrors_bound() == devices::SPACES, "{} mirrors bound with every slot taken", dev.mirrors_bound());
    let t = spaces.pop().ok_or("no space bound")?;
    drop(t);
    let late = Tenant::new(0x30)?;
    let m = devmmu::bind(0, &late.space).map_err(|e| format!("binding after a space exited: {e}"))?;
    check!(m.is_live());
    drop((m, more, mb));
    Ok(())
}

pub fn two_spaces_two_devices_interleaved(_s: &crate::System) -> TestResult {
    let devs: Vec<usize> = devices::all().iter().filter(|d| d.mmu().is_some()).map(|d| d.index()).take(2).collect();
    if devs.len() < 2 {
        return Ok(());
    }
    let all = vram::all().map_err(|e| e.to_string())?;
    let base_in_use: Vec<u64> = devs.iter().map(|&d| all[d].in_use()).collect();
    for seed in [0x5eed_0001u64, 0x5eed_0002] {
        interleave(&devs, seed)?;
    }
    for (i, &d) in devs.iter().enumerate() {
        check!(
            all[d].in_use() == base_in_use[i],
            "dev{d}: {} pages in use after, {} before",
            all[d].in_use(),
            base_in_use[i]
        );
    }
    Ok(())
}

fn interleave(devs: &[usize], seed: u64) -> TestResult {
    let all = vram::all().map_err(|e| e.to_string())?;
    let mut rng = hmm::place::Rng::new(seed);
    let mut tenants = [Tenant::new(1)?, Tenant::new(2)?];
    // mirrors[t][i]: tenant t's mirror on devs[i].
    let mut mirrors: Vec<Vec<Arc<DevMirror>>> = Vec::new();
    for t in &tenants {
        let ms: Result<Vec<_>, _> = devs.iter().map(|&d| devmmu::bind(d, &t.space)).collect();
        mirrors.push(ms.map_err(|e| e.to_string())?);
    }
    for step in 0..120 {
        let ti = rng.below(2) as usize;
        let di = rng.below(devs.len() as u64) as usize;
        let k = rng.below(PAGES - 3);
        let n = 1 + rng.below(3);
        let what = format!("seed {seed:#x} step {step}");
        let t = &mut tenants[ti];
        let (start, len) = (t.a + k * PAGE, n * PAGE);
        match rng.below(6) {
            0 => {
                mirrors[ti][di].fault(start, start + len, true).map_err(|e| format!("{what}: fault: {e}"))?;
            }
            1 => {
                vram::migrate_to_device(&all[devs[di]], &t.space, start, n)
                    .map_err(|e| format!("{what}: to dev: {e}"))?;
            }
            2 => {
                vram::migrate_to_ram(&all[devs[di]], &t.space, start, n).map_err(|e| format!("{what}: to RAM: {e}"))?;
            }
            3 => {
                // An invalidation: read-only, then writable again, then a fresh version.
                t.space.lock().mprotect(start, len, Prot::READ).map_err(|e| e.to_string())?;
                t.space.lock().mprotect(start, len, Prot::RW).map_err(|e| e.to_string())?;
                for j in k..k + n {
                    t.version[j as usize] += 1;
                    t.write(j)?;
                }
            }
            4 => {
                // munmap and map again at the same place: the pages are new and zero, then
                // written afresh.
                t.space.lock().munmap(start, len).map_err(|e| e.to_string())?;
                let again = t
                    .space
                    .lock()
                    .mmap(MapRequest::anon(len, Prot::RW).fixed_noreplace(start))
                    .map_err(|e| format!("{what}: mmap again: {e}"))?;
                check!(again == start, "{what}: mapped again at {again:#x}, not {start:#x}");
                for j in k..k + n {
                    t.version[j as usize] += 1;
                    t.write(j)?;
                }
            }
            _ => {
                // The device reads the pages by virtual address, if its mirror maps them
                // (a fault first), into scratch device memory: each is the tenant's own.
                let m = &mirrors[ti][di];
                m.fault(start, start + len, false).map_err(|e| format!("{what}: read fault: {e}"))?;
                let dev = devices::nth(devs[di]).map_err(|e| e.to_string())?;
                for j in k..k + n {
                    match devmmu::dma(m, Dir::ToDevice, DevOffset::new(scratch(dev)), &[(t.a + j * PAGE, PAGE as u32)])
                    {
                        Ok(()) => check!(
                            read_dev(dev, scratch(dev))? == t.page(j),
                            "{what}: dev{} read a page not tenant {ti}'s own (page {j})",
                            devs[di]
                        ),
                        // A page in device memory is local to one device and not in the
                        // domain: the mirror refuses DMA by VA for it, which is right.
                        Err(DevError::Mirror(MirrorError::NotMapped { .. })) => {}
                        Err(e) => return Err(format!("{what}: DMA: {e}")),
                    }
                }
            }
        }
        if step % 20 == 19 {
            for t in &tenants {
                t.check(&what)?;
            }
        }
    }
    for t in &tenants {
        t.check(&format!("seed {seed:#x} at the end"))?;
    }
    drop(mirrors);
    drop(tenants);
    Ok(())
}
