//! The pinned maps. Sizes here are defaults; the loader sets the association
//! maps' size at attach time.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use floatip_common::{
    AssocStats, DEFAULT_MAX_ASSOCIATIONS, IFACE_SLOTS as IFACE_SLOTS_LEN, IfaceInfo, IfaceSlot,
    MAX_GATEWAY_ADDRS, MAX_IFACES, MAX_POOL_PREFIXES, Meta, NatEntry, NextHop, POOL_ANY_NIC,
    POOL_MEMBER, PoolValue, ROUTE_FILTER_WORDS, Routing, SPOOF_FILTER_BUCKETS, outcome,
    route_filter_bit, spoof_filter_bucket, stats_slots,
};

use crate::frame::mac_bits;

// Plain HASH, never LRU: an eviction would silently break half of a pair.
#[map(name = "FIP_TO_FIXED")]
pub static FIP_TO_FIXED: HashMap<u32, NatEntry> = HashMap::pinned(DEFAULT_MAX_ASSOCIATIONS, 0);

#[map(name = "FIXED_TO_FIP")]
pub static FIXED_TO_FIP: HashMap<u32, NatEntry> = HashMap::pinned(DEFAULT_MAX_ASSOCIATIONS, 0);

// Counts, never reset by the programs: kept by the loader (see floatip-common).
#[map(name = "SPOOF_FILTER")]
pub static SPOOF_FILTER: Array<u32> = Array::pinned(SPOOF_FILTER_BUCKETS, 0);

#[map(name = "POOLS")]
pub static POOLS: LpmTrie<u32, PoolValue> = LpmTrie::pinned(MAX_POOL_PREFIXES, 0);

// Per-CPU counters as one flat array, CPU c's copy of slot s at c * STATS_SLOTS + s: one
// cache line per count, where a PERCPU_ARRAY reads its pointer table first (a second
// miss per packet once the slots outgrow the caches). The loader sizes it.
#[map(name = "ASSOC_STATS")]
// Mmapable: the loader sums a slot over the CPUs by reading memory, not one system call per CPU.
pub static ASSOC_STATS: Array<AssocStats> =
    Array::pinned(stats_slots(DEFAULT_MAX_ASSOCIATIONS), BPF_F_MMAPABLE);

// One entry unless the loader chose shared counters (and then ASSOC_STATS has one).
#[map(name = "ASSOC_STATS_SHARED")]
pub static ASSOC_STATS_SHARED: Array<AssocStats> = Array::pinned(1, 0);

// Set by the loader (floatip_common::globals): read-only data, so the verifier
// sees a constant and drops the counting branch not taken.
#[unsafe(no_mangle)]
static SHARED_COUNTERS: u32 = 0;

// Set by the loader: the counter slots, the stride of `ASSOC_STATS` between CPUs.
#[unsafe(no_mangle)]
static STATS_SLOTS: u32 = 0;

/// Where CPU `cpu`'s counters of `slot` lie in `ASSOC_STATS` (an index the map's own bound
/// check refuses if it is out of range).
#[inline(always)]
pub fn per_cpu_slot(cpu: u32, slot: u32) -> u32 {
    let slots = unsafe { core::ptr::read_volatile(&STATS_SLOTS) };
    cpu.wrapping_mul(slots).wrapping_add(slot)
}

/// Whether the association counters are the shared ones.
#[inline(always)]
pub fn shared_counters() -> bool {
    unsafe { core::ptr::read_volatile(&SHARED_COUNTERS) != 0 }
}

// Never read by the programs: the loader's record of which slot is whose.
#[map(name = "SLOT_OWNERS")]
pub static SLOT_OWNERS: Array<u32> = Array::pinned(stats_slots(DEFAULT_MAX_ASSOCIATIONS), 0);

#[map(name = "OUTCOMES")]
pub static OUTCOMES: PerCpuArray<u64> = PerCpuArray::pinned(outcome::COUNT, 0);

#[map(name = "IFACES")]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::pinned(MAX_IFACES, 0);

#[map(name = "IFACE_SLOTS")]
pub static IFACE_SLOTS: Array<IfaceSlot> = Array::pinned(IFACE_SLOTS_LEN, 0);

#[map(name = "GATEWAY_ADDRS")]
pub static GATEWAY_ADDRS: HashMap<u32, u32> = HashMap::pinned(MAX_GATEWAY_ADDRS, 0);

#[map(name = "REDIRECT")]
pub static REDIRECT: DevMapHash = DevMapHash::pinned(MAX_IFACES, 0);

#[map(name = "META")]
pub static META: Array<Meta> = Array::pinned(1, 0);

// Written only by the next-hop follower; all zero (nothing cached) without one.
#[map(name = "ROUTING")]
pub static ROUTING: Array<Routing> = Array::pinned(1, 0);

#[map(name = "DEFAULT_HOP")]
pub static DEFAULT_HOP: Array<NextHop> = Array::pinned(2, 0);

#[map(name = "ROUTE_FILTER")]
pub static ROUTE_FILTER: Array<u64> = Array::pinned(ROUTE_FILTER_WORDS, 0);

// Entries only for the NICs' programs, created by the loader; the programs only add.
#[map(name = "SEND_DROPS")]
pub static SEND_DROPS: PerCpuHashMap<u32, u64> = PerCpuHashMap::pinned(MAX_IFACES, 0);

/// The next-hop cache's record, if a follower's lease on it is current
/// (`None`: nothing is cached, every packet asks the FIB). Read once per
/// packet, and only for a packet that has a candidate hop.
#[inline(always)]
pub fn routing() -> Option<Routing> {
    let r = ROUTING.get(0)?;
    (r.epoch != 0 && unsafe { bpf_ktime_get_coarse_ns() } < r.lease_ns).then_some(*r)
}

/// The default route's cached next hop (of `routing`'s current entry), if
/// no other route overlaps `dst`'s /16 (so the FIB would answer with the
/// default route too).
#[inline(always)]
pub fn default_hop(routing: &Routing, dst: u32) -> Option<&'static NextHop> {
    let (word, bit) = route_filter_bit(dst);
    if ROUTE_FILTER.get(word).is_none_or(|w| (*w >> bit) & 1 != 0) {
        return None;
    }
    DEFAULT_HOP
        .get_ptr(routing.default_index & 1)
        .map(|h| unsafe { &*h })
}

/// Floating IP -> its fixed IP, counter slot and next hop: the entry in the
/// map's memory, read where used rather than copied (a copy of its 32 bytes
/// costs a hit more than the fields it reads).
#[inline(always)]
pub fn fixed_of(floating: u32) -> Option<&'static NatEntry> {
    FIP_TO_FIXED.get_ptr(floating).map(|e| unsafe { &*e })
}

/// Whether `addr` may be a fixed or floating IP of an association or a pool
/// address: false is certain (its /16 counts none of them), true needs the
/// exact lookups. An array read instead of them for nearly every Internet
/// address.
#[inline(always)]
pub fn maybe_managed(addr: u32) -> bool {
    SPOOF_FILTER
        .get(spoof_filter_bucket(addr))
        .is_none_or(|n| *n != 0)
}

/// Fixed IP -> its floating IP and counter slot (in place, as [`fixed_of`]).
#[inline(always)]
pub fn floating_of(fixed: u32) -> Option<&'static NatEntry> {
    FIXED_TO_FIP.get_ptr(fixed).map(|e| unsafe { &*e })
}

/// Whether `addr` lies in a floating IP pool (and is not excluded from it).
#[inline(always)]
pub fn in_pool(addr: u32) -> bool {
    POOLS
        .get(Key::new(32, addr))
        .is_some_and(|v| v.kind == POOL_MEMBER)
}

/// Whether `addr` is one of the gateway's own addresses.
#[inline(always)]
pub fn is_gateway_address(addr: u32) -> bool {
    GATEWAY_ADDRS.get_ptr(addr).is_some()
}

/// Whether NIC `ifindex` may answer for `addr`: unless `addr` lies in a pool
/// bound to another external NIC (addresses outside pools, as `nat`
/// plumbing makes them, are answered everywhere).
#[inline(always)]
pub fn pool_answers_on(addr: u32, ifindex: u32) -> bool {
    match POOLS.get(Key::new(32, addr)) {
        Some(v) if v.kind == POOL_MEMBER => {
            (v.ifindex == POOL_ANY_NIC || v.ifindex == ifindex) && (v.fenced == 0 || lease_alive())
        }
        _ => true,
    }
}

/// Whether this gateway's lease in its group is known alive (the agent renews the deadline
/// with every keep-alive): only then does it answer for its group's pools. A clock read, on
/// the ARP path only.
#[inline(always)]
fn lease_alive() -> bool {
    META.get(0)
        .is_some_and(|m| unsafe { bpf_ktime_get_coarse_ns() } < m.answer_until)
}

/// The MAC of `ifindex` if floatip manages that NIC: from its `IFACE_SLOTS`
/// slot (an array read) when it holds it, else from `IFACES`.
#[inline(always)]
pub fn managed_mac(ifindex: u32) -> Option<u64> {
    if let Some(s) = IFACE_SLOTS.get(IfaceSlot::index(ifindex))
        && s.ifindex == ifindex
    {
        return Some(s.mac);
    }
    IFACES
        .get_ptr(ifindex)
        .map(|i| mac_bits(unsafe { &(*i).mac }))
}
