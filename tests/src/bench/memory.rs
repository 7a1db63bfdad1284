//! Map memory at scale. The kernel charges a map what its `map_mem_usage`
//! computes (the `memlock` of the map's fdinfo), from the map's type, key
//! and value sizes, entries and the number of possible CPUs. This module
//! does the same arithmetic for any CPU count, from the maps as
//! `floatip attach --max-associations 1000000` creates them (sizes read
//! back from the kernel, so the figures follow every change of a
//! `floatip-common` type or of the map set), and checks it against the
//! kernel's own figure for this machine's CPU count. At each CPU count the
//! maps are those the loader would create there: per-CPU association
//! counters where they fit its memory budget, shared ones where they do not
//! (both variants are created and read back).
//!
//! Per-entry sizes (x86-64, kernel/bpf/{hashtab,arraymap,lpm_trie,devmap}.c):
//! - hash: an element is a 48-byte `htab_elem` header + key and value, each
//!   rounded up to 8 bytes (a per-CPU hash stores a pointer instead of the
//!   value, and the value, rounded, once per CPU); a preallocated hash holds
//!   `max_entries` elements (+ one spare per CPU unless per-CPU or LRU), plus a
//!   16-byte bucket per power-of-two slot and 8 lock counters per CPU;
//! - array: the value rounded up to 8 bytes per entry; a per-CPU array a
//!   pointer per entry and the rounded value per entry per CPU;
//! - LPM trie: a 24-byte node + the key's data + the value per entry in use;
//! - devmap hash: an 8-byte bucket per power-of-two slot (+ the interfaces in it);
//! - and each map's fixed header, as this kernel (6.18) has it.

use std::path::Path;

use anyhow::Result;
use floatip::dataplane::{
    Counters,
    bench::{MapFacts, MapKind, map_facts_for, possible_cpus},
};
use floatip_common::maps as names;

/// The association count the figures are for.
pub const ASSOCIATIONS: u32 = 1_000_000;
/// CPU counts reported besides this machine's.
pub const CPU_COUNTS: [u64; 3] = [2, 64, 128];
/// The ceiling at 64 CPUs.
pub const LIMIT_AT_64: u64 = 1_000_000_000;

const HTAB_ELEM: u64 = 48;
const HTAB_BUCKET: u64 = 16;
const HTAB_LOCKS_PER_CPU: u64 = 8 * 4;
const LLIST_NODE: u64 = 8;
const LPM_NODE: u64 = 24;
const BPF_F_NO_PREALLOC: u32 = 1;
/// `sizeof(struct bpf_htab)`, `bpf_array`, `bpf_dtab` (the memlock of an
/// empty map less its entries, on 6.18).
const HTAB_HEADER: u64 = 896;
const ARRAY_HEADER: u64 = 312;
const PAGE: u64 = 4096;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const DTAB_HEADER: u64 = 344;

fn round8(n: u32) -> u64 {
    u64::from(n).div_ceil(8) * 8
}

/// What the kernel charges for `m` on a machine with `cpus` possible CPUs
/// with `in_use` entries in it (which only maps that allocate per entry use:
/// hashes without preallocation, the LPM trie, devmaps). `None` for a
/// type this model does not know.
pub fn kernel_bytes(m: &MapFacts, cpus: u64, in_use: u64) -> Option<u64> {
    let max = u64::from(m.max_entries);
    let (key, value) = (round8(m.key_size), round8(m.value_size));
    let hash = |percpu: bool, lru: bool| {
        let elem = HTAB_ELEM + key + if percpu { 8 } else { value };
        let mut usage =
            HTAB_HEADER + HTAB_BUCKET * max.next_power_of_two() + HTAB_LOCKS_PER_CPU * cpus;
        if m.flags & BPF_F_NO_PREALLOC == 0 {
            let spare = if percpu || lru { 0 } else { cpus };
            usage += elem * (max + spare);
            if percpu {
                usage += value * cpus * max;
            } else if !lru {
                usage += 8 * cpus;
            }
        } else {
            usage += (elem + LLIST_NODE) * in_use;
            if percpu {
                usage += (LLIST_NODE + 8) * in_use + value * cpus * in_use;
            }
        }
        usage
    };
    Some(match &m.kind {
        MapKind::Hash => hash(false, false),
        MapKind::PerCpuHash => hash(true, false),
        MapKind::LruHash => hash(false, true),
        MapKind::LruPerCpuHash => hash(true, true),
        // An mmapable array's values start on a page of their own and fill whole pages.
        MapKind::Array if m.flags & BPF_F_MMAPABLE != 0 => {
            ARRAY_HEADER.next_multiple_of(PAGE) + (max * value).next_multiple_of(PAGE)
        }
        MapKind::Array => ARRAY_HEADER + max * value,
        MapKind::PerCpuArray => ARRAY_HEADER + max * (8 + value * cpus),
        MapKind::LpmTrie => {
            in_use * (LPM_NODE + u64::from(m.key_size - 4) + u64::from(m.value_size))
        }
        MapKind::DevMap => DTAB_HEADER + max * 8,
        MapKind::DevMapHash => DTAB_HEADER + 8 * max.next_power_of_two(),
        MapKind::Other(_) => return None,
    })
}

/// One map's figures.
#[derive(Clone, Debug)]
pub struct MapMemory {
    /// As the loader creates it on this machine.
    pub facts: MapFacts,
    /// [`kernel_bytes`] at each of [`CPU_COUNTS`], of the map as the loader
    /// would create it there.
    pub at: Vec<(u64, Option<u64>)>,
    /// Its entries at each of [`CPU_COUNTS`] (the counter maps' differ with
    /// the loader's choice).
    pub entries: Vec<(u64, u32)>,
    /// [`kernel_bytes`] at this machine's CPU count, to compare with `facts.memlock`.
    pub here: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct MemoryResult {
    pub associations: u32,
    /// Possible CPUs of this machine, what the kernel's figures are for.
    pub cpus_here: u64,
    /// The loader's choice of counters at each of [`CPU_COUNTS`] and here.
    pub counters: Vec<(u64, Counters)>,
    pub counters_here: Counters,
    pub maps: Vec<MapMemory>,
}

impl MemoryResult {
    /// Total at `cpus` (one of [`CPU_COUNTS`]); maps the model does not
    /// know count with the kernel's figure for this machine.
    pub fn total(&self, cpus: u64) -> u64 {
        self.maps
            .iter()
            .map(|m| {
                m.at.iter()
                    .find(|(c, _)| *c == cpus)
                    .and_then(|(_, b)| *b)
                    .unwrap_or(m.facts.memlock)
            })
            .sum()
    }

    /// The map that costs most at `cpus`.
    pub fn largest(&self, cpus: u64) -> Option<(&MapMemory, u64)> {
        self.maps
            .iter()
            .filter_map(|m| {
                let b = m.at.iter().find(|(c, _)| *c == cpus)?.1?;
                Some((m, b))
            })
            .max_by_key(|(_, b)| *b)
    }

    pub fn kernel_total(&self) -> u64 {
        self.maps.iter().map(|m| m.facts.memlock).sum()
    }

    pub fn model_total_here(&self) -> u64 {
        self.maps
            .iter()
            .map(|m| m.here.unwrap_or(m.facts.memlock))
            .sum()
    }

    /// Maps whose memory grows with the entries in use rather than
    /// preallocated, with what they would take full at 64 CPUs (they are
    /// counted empty).
    pub fn by_use(&self) -> Vec<(&str, u64)> {
        self.maps
            .iter()
            .filter_map(|m| {
                let empty = kernel_bytes(&m.facts, 64, 0)?;
                let full = kernel_bytes(&m.facts, 64, u64::from(m.facts.max_entries))?;
                (full != empty).then_some((m.facts.name.as_str(), full))
            })
            .collect()
    }

    /// Maps the model does not know.
    pub fn unknown(&self) -> Vec<&str> {
        self.maps
            .iter()
            .filter(|m| m.here.is_none())
            .map(|m| m.facts.name.as_str())
            .collect()
    }
}

/// Creates the maps for [`ASSOCIATIONS`] under a private pin directory
/// (`bpffs`, which must not exist), once with per-CPU and once with shared
/// counters, and computes every figure. The maps are empty: what grows with
/// entries in use (pool prefixes, interfaces) is counted as none, which is
/// what it is in the kernel's figure too.
pub fn run(bpffs: &Path) -> Result<MemoryResult> {
    let per_cpu = map_facts_for(bpffs, ASSOCIATIONS, Counters::PerCpu)?;
    let shared = map_facts_for(bpffs, ASSOCIATIONS, Counters::Shared)?;
    let cpus_here = possible_cpus()? as u64;
    Ok(compute(&per_cpu, &shared, cpus_here))
}

/// The loader's choice for [`ASSOCIATIONS`] on `cpus` CPUs.
fn choice(cpus: u64) -> Counters {
    Counters::for_size(ASSOCIATIONS, cpus as u32)
}

fn compute(per_cpu: &[MapFacts], shared: &[MapFacts], cpus_here: u64) -> MemoryResult {
    let variant = |cpus: u64| match choice(cpus) {
        Counters::PerCpu => per_cpu,
        Counters::Shared => shared,
    };
    // The per-CPU counters are one flat array of every slot on every CPU: the facts of this
    // machine's, rescaled to `cpus`.
    let named = |cpus: u64, name: &str| {
        let mut g = variant(cpus).iter().find(|g| g.name == name).cloned()?;
        if g.name == names::ASSOC_STATS && choice(cpus) == Counters::PerCpu {
            g.max_entries = (u64::from(g.max_entries) / cpus_here.max(1) * cpus) as u32;
        }
        Some(g)
    };
    let maps = variant(cpus_here)
        .iter()
        .map(|f| {
            let there: Vec<(u64, Option<MapFacts>)> = CPU_COUNTS
                .iter()
                .map(|c| (*c, named(*c, &f.name)))
                .collect();
            MapMemory {
                at: there
                    .iter()
                    .map(|(c, g)| (*c, g.as_ref().and_then(|g| kernel_bytes(g, *c, 0))))
                    .collect(),
                entries: there
                    .iter()
                    .map(|(c, g)| (*c, g.as_ref().map_or(0, |g| g.max_entries)))
                    .collect(),
                here: kernel_bytes(f, cpus_here, 0),
                facts: f.clone(),
            }
        })
        .collect();
    MemoryResult {
        associations: ASSOCIATIONS,
        cpus_here,
        counters: CPU_COUNTS.iter().map(|c| (*c, choice(*c))).collect(),
        counters_here: choice(cpus_here),
        maps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: MapKind, key: u32, value: u32, max: u32) -> MapFacts {
        MapFacts {
            name: "M".into(),
            kind,
            key_size: key,
            value_size: value,
            max_entries: max,
            flags: 0,
            memlock: 0,
        }
    }

    /// The memlock the kernel (6.18, 2 possible CPUs) gave the maps of
    /// `floatip attach --max-associations 1000000` (layout version 3).
    #[test]
    fn matches_the_kernel_on_two_cpus() {
        let h = facts(MapKind::Hash, 4, 8, 1_000_000);
        assert_eq!(kernel_bytes(&h, 2, 0), Some(80_778_320));
        let a = facts(MapKind::PerCpuArray, 4, 32, 1_062_501);
        assert_eq!(kernel_bytes(&a, 2, 0), Some(76_500_384));
        let a = facts(MapKind::Array, 4, 4, 1_062_501);
        assert_eq!(kernel_bytes(&a, 2, 0), Some(8_500_320));
        let d = facts(MapKind::DevMapHash, 4, 8, 64);
        assert_eq!(kernel_bytes(&d, 2, 0), Some(856));
        let i = facts(MapKind::Hash, 4, 8, 64);
        assert_eq!(kernel_bytes(&i, 2, 0), Some(6_224));
    }

    /// At each CPU count the figures are those of the loader's choice there:
    /// per-CPU counters at 2 CPUs, shared ones at 64 and 128.
    #[test]
    fn figures_follow_the_loaders_choice() {
        let slots = 1_062_501;
        let named = |name: &str, kind, max| MapFacts {
            name: name.into(),
            ..facts(kind, 4, 32, max)
        };
        let variant = |per_cpu, shared| {
            vec![
                named("ASSOC_STATS", MapKind::Array, per_cpu),
                named("ASSOC_STATS_SHARED", MapKind::Array, shared),
            ]
        };
        let m = compute(&variant(2 * slots, 1), &variant(1, slots), 2);
        assert_eq!(m.counters_here, Counters::PerCpu);
        assert_eq!(
            m.counters,
            vec![
                (2, Counters::PerCpu),
                (64, Counters::Shared),
                (128, Counters::Shared)
            ]
        );
        let array = |max: u64, per_cpu: Option<u64>| ARRAY_HEADER + max * 32 * per_cpu.unwrap_or(1);
        let slots = u64::from(slots);
        assert_eq!(m.total(2), array(slots, Some(2)) + array(1, None));
        assert_eq!(m.total(64), array(1, None) + array(slots, None));
        assert_eq!(m.total(128), array(1, None) + array(slots, None));
        assert_eq!(
            m.maps[0].entries,
            vec![(2, 2 * 1_062_501), (64, 1), (128, 1)]
        );
    }

    #[test]
    fn mmapable_arrays_take_whole_pages() {
        let mut a = facts(MapKind::Array, 4, 32, 2 * 1_062_501);
        a.flags = BPF_F_MMAPABLE;
        assert_eq!(kernel_bytes(&a, 2, 0), Some(4096 + 68_001_792));
        a.max_entries = 1;
        assert_eq!(kernel_bytes(&a, 2, 0), Some(8192));
    }

    #[test]
    fn per_cpu_hash_values_grow_with_cpus() {
        let h = facts(MapKind::PerCpuHash, 4, 12, 1024);
        let two = kernel_bytes(&h, 2, 0).unwrap();
        let four = kernel_bytes(&h, 4, 0).unwrap();
        // Two more CPUs: the 16-byte value and the lock counters, twice.
        assert_eq!(four - two, 1024 * 16 * 2 + 2 * 32);
    }
}
