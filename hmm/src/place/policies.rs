//! The policies of `reference/placement.md` 5.1, one file each, and the registry experiments
//! name them by.
//!
//! | name | | file |
//! |---|---|---|
//! | `advice` | P0 preferred location, accessed-by, read-mostly, prefetch on advice | [`p0_advice`] |
//! | `first-touch` | P1 first touch, and Griffin's delayed first touch | [`p1_first_touch`] |
//! | `on-touch` | P2 migrate on touch at 4 KiB / 64 KiB / 2 MiB | [`p2_on_touch`] |
//! | `tree` | P3 UVM's tree density prefetcher (TBNp) | [`p3_tree`] |
//! | `random-prefetch` | P3 variant, ISCA'19's random prefetcher (Rp) | [`p3_random`] |
//! | `thrashing` | P4 thrashing detection, throttling and pinning | [`p4_thrash`] |
//! | `counters` | P5 access-counter remote-first migration | [`p5_counters`] |
//! | `hotness` | P6 HeMem / Memtis tiering | [`p6_hotness`] |
//! | `evict` (eviction) | P7 root-chunk, LRU 4K/2M, LFU 2M, TBNe, SLe, random | [`p7_evict`] |
//! | `duplicate` | P8 read duplication and GRIT-style choice | [`p8_duplicate`] |
//!
//! A new policy is one file implementing [`Policy`] plus one [`PolicyDef`] line in [`PLACEMENT`].

pub mod p0_advice;
pub mod p1_first_touch;
pub mod p2_on_touch;
pub mod p3_random;
pub mod p3_tree;
pub mod p4_thrash;
pub mod p5_counters;
pub mod p6_hotness;
pub mod p7_evict;
pub mod p8_duplicate;

use super::params::{ParamDef, ParamError, Params};
use super::policy::{Policy, Stack, UntilFull};
use alloc::boxed::Box;
use alloc::format;

/// A policy experiments can name.
#[derive(Debug, Clone, Copy)]
pub struct PolicyDef {
    /// Its name in experiment files.
    pub name: &'static str,
    /// Its number in `reference/placement.md` 5.1.
    pub id: &'static str,
    /// One line.
    pub help: &'static str,
    /// Its parameters.
    pub params: &'static [ParamDef],
    /// Builds it from checked parameters.
    pub build: fn(&Params) -> Box<dyn Policy>,
}

/// Placement policies.
pub const PLACEMENT: &[PolicyDef] = &[
    PolicyDef {
        name: "advice",
        id: "P0",
        help: "preferred location / accessed-by / read-mostly advice",
        params: p0_advice::PARAMS,
        build: |p| Box::new(p0_advice::Advice::new(p)),
    },
    PolicyDef {
        name: "first-touch",
        id: "P1",
        help: "place on the first toucher, never migrate (delay > 0: Griffin's delayed first touch)",
        params: p1_first_touch::PARAMS,
        build: |p| Box::new(p1_first_touch::FirstTouch::new(p)),
    },
    PolicyDef {
        name: "on-touch",
        id: "P2",
        help: "migrate on touch at 4K, 64K or 2M granularity",
        params: p2_on_touch::PARAMS,
        build: |p| Box::new(p2_on_touch::OnTouch::new(p)),
    },
    PolicyDef {
        name: "tree",
        id: "P3",
        help: "UVM's tree-based density prefetcher (TBNp)",
        params: p3_tree::PARAMS,
        build: |p| Box::new(p3_tree::Tree::new(p)),
    },
    PolicyDef {
        name: "random-prefetch",
        id: "P3",
        help: "random prefetch of one page per fault within its 2 MiB block (Rp)",
        params: p3_random::PARAMS,
        build: |p| Box::new(p3_random::RandomPrefetch::new(p)),
    },
    PolicyDef {
        name: "thrashing",
        id: "P4",
        help: "UVM thrashing detection with throttling and pinning, over the tree prefetcher",
        params: p4_thrash::PARAMS,
        build: |p| Box::new(p4_thrash::Thrashing::new(p)),
    },
    PolicyDef {
        name: "counters",
        id: "P5",
        help: "remote first, migrate when an access counter reaches its threshold",
        params: p5_counters::PARAMS,
        build: |p| Box::new(p5_counters::AccessCounters::new(p)),
    },
    PolicyDef {
        name: "hotness",
        id: "P6",
        help: "HeMem / Memtis hotness tiering with periodic promotion and demotion",
        params: p6_hotness::PARAMS,
        build: |p| Box::new(p6_hotness::Hotness::new(p)),
    },
    PolicyDef {
        name: "duplicate",
        id: "P8",
        help: "read duplication with invalidate on write, or GRIT-style per-region choice",
        params: p8_duplicate::PARAMS,
        build: |p| Box::new(p8_duplicate::Duplicate::new(p)),
    },
];

/// The eviction policy (P7); its `order` parameter picks the variant.
pub const EVICTION: PolicyDef = PolicyDef {
    name: "evict",
    id: "P7",
    help: "eviction order under oversubscription",
    params: p7_evict::PARAMS,
    build: |p| Box::new(p7_evict::Evict::new(p)),
};

/// The placement policy named `name`.
pub fn find(name: &str) -> Result<&'static PolicyDef, ParamError> {
    PLACEMENT.iter().find(|d| d.name == name).ok_or_else(|| {
        let names: alloc::vec::Vec<&str> = PLACEMENT.iter().map(|d| d.name).collect();
        ParamError::Other(format!("unknown policy `{name}`; known: {}", names.join(", ")))
    })
}

/// Builds placement policy `name` with `params`, stacked with eviction parameters `evict`
/// (UVM's root-chunk order when empty).
pub fn build(name: &str, params: &Params, evict: &Params) -> Result<Box<dyn Policy>, ParamError> {
    let d = find(name)?;
    let checked = params.checked(d.params)?;
    let mut place = (d.build)(&checked);
    // The prefetchers' `until_full`: another placement (with its defaults) decides until the
    // device is first oversubscribed.
    let before = checked.text("until_full");
    if !before.is_empty() && before != "none" {
        let b = find(before)?;
        place = Box::new(UntilFull::new((b.build)(&Params::new().checked(b.params)?), place));
    }
    let evict = (EVICTION.build)(&evict.checked(EVICTION.params)?);
    Ok(Box::new(Stack::new(place, evict)))
}

/// Migrate on touch, page by page (`on-touch`, 4 KiB: UVM's and SVM's default), with the
/// default eviction order: the compute jobs' default policy.
pub fn migrate_on_touch() -> Box<dyn Policy> {
    Box::new(Stack::new(
        Box::new(p2_on_touch::OnTouch { window: 1 }),
        (EVICTION.build)(&Params::new().checked(EVICTION.params).unwrap_or_default()),
    ))
}

/// Never migrate: the device maps system memory where it is (`advice` with the preferred
/// location the CPU and the device in accessed-by: `cudaMemAdviseSetPreferredLocation(cpu)` +
/// `SetAccessedBy`).
pub fn remote_map() -> Box<dyn Policy> {
    let mut p = Params::new();
    p.set("preferred", super::params::Value::Text("cpu".into()));
    p.set("accessed_by", super::params::Value::Bool(true));
    Box::new(Stack::new(
        Box::new(p0_advice::Advice::new(&p.checked(p0_advice::PARAMS).unwrap_or_default())),
        (EVICTION.build)(&Params::new().checked(EVICTION.params).unwrap_or_default()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::params::Value;

    #[test]
    fn every_policy_builds_with_defaults() {
        for d in PLACEMENT {
            let p = build(d.name, &Params::new(), &Params::new()).unwrap();
            assert!(p.name().ends_with("+root-chunk"), "{}", p.name());
        }
        for o in p7_evict::ORDERS {
            let mut e = Params::new();
            e.set("order", Value::Text((*o).into()));
            assert!(build("tree", &Params::new(), &e).unwrap().name().ends_with(o));
        }
    }

    #[test]
    fn bad_names_and_params_are_explained() {
        let e = build("lru", &Params::new(), &Params::new()).unwrap_err();
        assert!(e.to_string().contains("unknown policy `lru`; known: advice, first-touch"), "{e}");
        let mut p = Params::new();
        p.set("threshold", Value::Int(0));
        let e = build("tree", &p, &Params::new()).unwrap_err();
        assert_eq!(e.to_string(), "`threshold` = 0: expected an integer from 1 to 100");
    }
}
