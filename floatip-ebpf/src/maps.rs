//! The pinned maps. Sizes here are defaults; the loader sets the association
//! maps' size at attach time.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use floatip_common::{
    AssocStats, DEFAULT_MAX_ASSOCIATIONS, IfaceInfo, MAX_IFACES, MAX_POOL_PREFIXES, Meta, NatEntry,
    POOL_MEMBER, outcome,
};

// Plain HASH, never LRU: an eviction would silently break half of a pair.
#[map(name = "FIP_TO_FIXED")]
pub static FIP_TO_FIXED: HashMap<u32, NatEntry> = HashMap::pinned(DEFAULT_MAX_ASSOCIATIONS, 0);

#[map(name = "FIXED_TO_FIP")]
pub static FIXED_TO_FIP: HashMap<u32, NatEntry> = HashMap::pinned(DEFAULT_MAX_ASSOCIATIONS, 0);

#[map(name = "POOLS")]
pub static POOLS: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_POOL_PREFIXES, 0);

#[map(name = "ASSOC_STATS")]
pub static ASSOC_STATS: PerCpuHashMap<u32, AssocStats> =
    PerCpuHashMap::pinned(DEFAULT_MAX_ASSOCIATIONS, 0);

#[map(name = "OUTCOMES")]
pub static OUTCOMES: PerCpuArray<u64> = PerCpuArray::pinned(outcome::COUNT, 0);

#[map(name = "IFACES")]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::pinned(MAX_IFACES, 0);

#[map(name = "REDIRECT")]
pub static REDIRECT: DevMapHash = DevMapHash::pinned(MAX_IFACES, 0);

#[map(name = "META")]
pub static META: Array<Meta> = Array::pinned(1, 0);

/// Floating IP -> fixed IP.
#[inline(always)]
pub fn fixed_of(floating: u32) -> Option<u32> {
    FIP_TO_FIXED.get_ptr(floating).map(|e| unsafe { (*e).addr })
}

/// Fixed IP -> floating IP.
#[inline(always)]
pub fn floating_of(fixed: u32) -> Option<u32> {
    FIXED_TO_FIP.get_ptr(fixed).map(|e| unsafe { (*e).addr })
}

/// Whether `addr` lies in a floating IP pool (and is not excluded from it).
#[inline(always)]
pub fn in_pool(addr: u32) -> bool {
    matches!(POOLS.get(Key::new(32, addr)), Some(&POOL_MEMBER))
}

#[inline(always)]
pub fn iface(ifindex: u32) -> Option<IfaceInfo> {
    IFACES.get_ptr(ifindex).map(|i| unsafe { *i })
}
