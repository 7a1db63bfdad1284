//! Types shared by the kernel programs and the user-space loader.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so that both
//! sides agree on the layout byte for byte; their sizes are asserted at
//! compile time (after the types). Addresses are stored as the four
//! bytes of the address in network order read as a native `u32`
//! (`u32::from_ne_bytes(ip.octets())`), which is exactly what the programs
//! read from the packet, so the fast path never swaps bytes.
#![no_std]

/// Version of the pinned map layout. Bumped whenever a key, value or map
/// changes shape, so a newer loader never misreads older pinned maps.
pub const MAP_LAYOUT_VERSION: u32 = 11;

/// Map names, shared so the loader opens exactly what the programs declare.
pub mod maps {
    /// floating IP -> [`super::NatEntry`] holding the fixed IP.
    pub const FIP_TO_FIXED: &str = "FIP_TO_FIXED";
    /// fixed IP -> [`super::NatEntry`] holding the floating IP.
    pub const FIXED_TO_FIP: &str = "FIXED_TO_FIP";
    /// LPM trie of pool prefixes -> [`super::PoolValue`].
    pub const POOLS: &str = "POOLS";
    /// Per-CPU counters per association, an array indexed by
    /// [`super::NatEntry::slot`].
    pub const ASSOC_STATS: &str = "ASSOC_STATS";
    /// The same counters shared by all CPUs (atomic adds), for gateways
    /// where per-CPU copies would not fit [`super::PER_CPU_COUNTERS_BUDGET`].
    /// The loader sizes the one in use to the slots and the other to one
    /// entry, so the pinned maps record the choice: this one has more than
    /// one entry exactly when the counters are shared.
    pub const ASSOC_STATS_SHARED: &str = "ASSOC_STATS_SHARED";
    /// Array of [`super::SPOOF_FILTER_BUCKETS`] counts, one per /16
    /// ([`super::spoof_filter_bucket`]): how many fixed IPs (`FIXED_TO_FIP`),
    /// floating IPs (`FIP_TO_FIXED`), pool prefixes (`POOLS`, members) and
    /// the gateway's own addresses (`GATEWAY_ADDRS`) fall into or overlap it. The programs look a source (or an inside
    /// destination) up in those maps only when its /16 counts one: an
    /// array read instead of two hash lookups and an LPM lookup for nearly
    /// every Internet address.
    pub const SPOOF_FILTER: &str = "SPOOF_FILTER";
    /// slot -> floating IP that owns the slot of `ASSOC_STATS` (0: free).
    /// Only the loader reads it, to hand out slots.
    pub const SLOT_OWNERS: &str = "SLOT_OWNERS";
    /// Per-CPU counters per outcome, indexed by [`super::outcome`].
    pub const OUTCOMES: &str = "OUTCOMES";
    /// ifindex -> [`super::IfaceInfo`] for every NIC floatip manages.
    pub const IFACES: &str = "IFACES";
    /// Array of [`super::IFACE_SLOTS`] [`super::IfaceSlot`]s, indexed by ifindex modulo its
    /// size: the managed NICs' MACs for the ingress check of every translated packet, an
    /// array read instead of a hash lookup. A NIC whose slot another one holds is found in
    /// `IFACES` instead.
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    /// Every IPv4 address of the gateway's namespace -> 1: a packet from
    /// outside with one of them as source is a spoof (a router drops it,
    /// RFC 1812 §5.3.7), never translated towards an instance. Written at
    /// attach and by the next-hop follower when addresses change.
    pub const GATEWAY_ADDRS: &str = "GATEWAY_ADDRS";
    /// Devmap of managed NICs, the redirect targets of the XDP programs.
    pub const REDIRECT: &str = "REDIRECT";
    /// One [`super::Meta`] record: layout version and state generation.
    pub const META: &str = "META";
    /// One [`super::Routing`] record: the next-hop epoch and which of the
    /// two `DEFAULT_HOP` entries is current.
    pub const ROUTING: &str = "ROUTING";
    /// Two [`super::NextHop`]s, the default route's (double-buffered, see
    /// [`super::Routing::default_index`]).
    pub const DEFAULT_HOP: &str = "DEFAULT_HOP";
    /// Array of [`super::ROUTE_FILTER_WORDS`] u64 bit sets: bit `n` set when
    /// some route other than the default one (a connected subnet, a local
    /// or broadcast address, a more specific route) overlaps the /16 `n`.
    pub const ROUTE_FILTER: &str = "ROUTE_FILTER";
    /// program id -> per-CPU u64: frames that program (a NIC's) redirected
    /// which the kernel then refused to send (into a veth whose peer runs no
    /// NAPI, a driver without XDP transmit) and dropped, counted nowhere else.
    /// Keyed by program id, not ifindex: the tracepoint sees every network
    /// namespace, where ifindexes repeat. Fed by a tracepoint program.
    pub const SEND_DROPS: &str = "SEND_DROPS";

    /// Every pinned map, in the order `detach` removes them.
    pub const ALL: [&str; 17] = [
        FIP_TO_FIXED,
        FIXED_TO_FIP,
        SPOOF_FILTER,
        POOLS,
        ASSOC_STATS,
        ASSOC_STATS_SHARED,
        SLOT_OWNERS,
        OUTCOMES,
        IFACES,
        IFACE_SLOTS,
        GATEWAY_ADDRS,
        REDIRECT,
        ROUTING,
        DEFAULT_HOP,
        ROUTE_FILTER,
        SEND_DROPS,
        META,
    ];
}

/// Where the send-drop program reads the fields of the kernel's `xdp:xdp_redirect_err`
/// record (byte offsets, each field an `int`). The loader checks them against the event's
/// `format` file before it attaches, so a kernel that lays the record out otherwise gets no
/// counter rather than a wrong one.
pub mod send_drops {
    pub const EVENT: (&str, &str) = ("xdp", "xdp_redirect_err");
    /// The id of the program that redirected.
    pub const PROG_ID: (&str, usize) = ("prog_id", 8);
}

/// Global variables of the data-plane object (read-only data the loader sets
/// before the programs are verified, so the verifier prunes the branch not taken).
pub mod globals {
    /// `u32`, 1 when the association counters are `ASSOC_STATS_SHARED`,
    /// 0 when they are the per-CPU `ASSOC_STATS`.
    pub const SHARED_COUNTERS: &str = "SHARED_COUNTERS";
    /// `u32`, the counter slots ([`super::stats_slots`]): the stride between two CPUs'
    /// copies in the flat per-CPU `ASSOC_STATS`.
    pub const STATS_SLOTS: &str = "STATS_SLOTS";
}

/// Program names (the function names in `floatip-ebpf`).
pub mod programs {
    pub const XDP_EXTERNAL: &str = "floatip_xdp_ext";
    pub const XDP_INTERNAL: &str = "floatip_xdp_int";
    pub const TC_EXTERNAL: &str = "floatip_tc_ext";
    pub const TC_INTERNAL: &str = "floatip_tc_int";
    /// TC egress of every external NIC, in every mode: the quotes of the
    /// ICMP errors the gateway's own kernel sends about translated packets.
    pub const TC_EGRESS: &str = "floatip_tc_egress";
    /// Tracepoint program counting the redirects the kernel refused
    /// (`xdp:xdp_redirect_err`).
    pub const SEND_DROPS: &str = "floatip_send_drops";
    /// Benchmark helpers in the `floatip-bench` object.
    pub const BENCH_PASS: &str = "bench_pass";
    pub const BENCH_REDIRECT: &str = "bench_redirect";
    pub const BENCH_DROP: &str = "bench_drop";
    pub const BENCH_GEN: &str = "bench_gen";
    pub const BENCH_LOOKUP: &str = "bench_lookup";
    pub const BENCH_FIB: &str = "bench_fib";
    pub const BENCH_MIN_NAT: &str = "bench_min_nat";
    /// The minimal NAT with, cumulatively, each step a router-grade hit adds (the cost
    /// staircase of `cargo xtask bench`): the ingress MAC check; the header checksum and
    /// TTL; the counters; the next-hop lease's clock.
    pub const BENCH_NAT_STAGES: [&str; 4] = [
        "bench_nat_mac",
        "bench_nat_checks",
        "bench_nat_counted",
        "bench_nat_leased",
    ];
    /// Test helper in the `floatip-bench` object (see the packet tests).
    pub const TEST_TC_VLAN: &str = "test_tc_vlan";
}

/// Default size of the association maps; `--max-associations` overrides it.
pub const DEFAULT_MAX_ASSOCIATIONS: u32 = 65_536;
/// Maximum number of pool prefixes (after splitting ranges into CIDRs).
pub const MAX_POOL_PREFIXES: u32 = 16_384;
/// Maximum number of managed interfaces.
pub const MAX_IFACES: u32 = 64;
/// Most addresses of the gateway's namespace `GATEWAY_ADDRS` holds.
pub const MAX_GATEWAY_ADDRS: u32 = 1024;

/// Number of counter slots for `max_associations` associations: a
/// sixteenth more than needed, so the loader's linear probing for a free
/// slot always ends soon (a table with no free slot would make it walk them
/// all), while the per-CPU counters stay close to what the associations need.
pub const fn stats_slots(max_associations: u32) -> u32 {
    max_associations
        .saturating_add(max_associations / 16)
        .saturating_add(1)
}

/// Most memory the per-CPU association counters may take: beyond it the
/// loader chooses the shared ones (one copy for all CPUs, atomic adds, at
/// the price of contention when CPUs count the same association). With the
/// default size, per-CPU counters fit up to 120 CPUs; with 1,000,000
/// associations up to 7.
pub const PER_CPU_COUNTERS_BUDGET: u64 = 256 << 20;

/// What the per-CPU counters of `max_associations` take on `cpus` possible
/// CPUs: one value per slot per CPU, in one flat array (`ASSOC_STATS`).
pub const fn per_cpu_counters_bytes(max_associations: u32, cpus: u32) -> u64 {
    let value = core::mem::size_of::<AssocStats>() as u64;
    stats_slots(max_associations) as u64 * value * cpus as u64
}

/// Entries of `ASSOC_STATS` for per-CPU counters: every CPU's copy of every slot, CPU c's
/// copy of slot s at `c * stats_slots + s`.
pub const fn per_cpu_counter_entries(max_associations: u32, cpus: u32) -> u32 {
    stats_slots(max_associations).saturating_mul(cpus)
}

/// Whether the loader chooses per-CPU counters (else shared ones) for
/// `max_associations` on `cpus` possible CPUs.
pub const fn per_cpu_counters_fit(max_associations: u32, cpus: u32) -> bool {
    per_cpu_counters_bytes(max_associations, cpus) <= PER_CPU_COUNTERS_BUDGET
}

/// Buckets of the `SPOOF_FILTER` counting filter.
pub const SPOOF_FILTER_BUCKETS: u32 = 1 << 16;

/// Bucket of an address (as stored: the bytes in network order read as a
/// native u32) in `SPOOF_FILTER`: its /16, the first two bytes. Tenants'
/// and pools' addresses share few /16s, so the Internet's sources fall into
/// empty buckets even with a million associations.
pub const fn spoof_filter_bucket(addr: u32) -> u32 {
    u32::from_be(addr) >> 16
}

/// The buckets of `SPOOF_FILTER` that the prefix `addr/len` overlaps (`addr` as stored).
pub fn spoof_filter_buckets(addr: u32, len: u8) -> core::ops::RangeInclusive<u32> {
    let first = spoof_filter_bucket(addr);
    let span = if len >= 16 { 1 } else { 1u32 << (16 - len) };
    let first = first & !(span - 1);
    first..=first + span - 1
}

/// Value of both association maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    /// The other address of the pair, network byte order.
    pub addr: u32,
    /// Index of the pair's counters in `ASSOC_STATS` (the same in both
    /// halves), so counting costs an array access, not a second hash lookup.
    pub slot: u32,
    /// In `FIP_TO_FIXED`: where a packet for the fixed IP leaves, as the
    /// next-hop follower resolved it; unused (zero) in `FIXED_TO_FIP`,
    /// whose packets leave by the default route ([`maps::DEFAULT_HOP`]).
    pub hop: NextHop,
}

/// A cached forwarding answer: the egress NIC and both MACs, what
/// `bpf_fib_lookup` would return for the destination. Valid only while
/// `epoch` equals [`Routing::epoch`] (never when it is 0): the follower
/// bumps the epoch first whenever routes, links or rules change, which
/// invalidates every cached answer at once, and the programs then ask the FIB.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub epoch: u32,
    /// Largest IPv4 total length the egress takes unfragmented; a longer
    /// packet asks the FIB (which answers "fragmentation needed").
    pub mtu: u16,
    pub _pad: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Global record of the next-hop cache (index 0 of `ROUTING`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    /// The current epoch; 0 while no follower runs: nothing is cached.
    pub epoch: u32,
    /// Which entry of `DEFAULT_HOP` (0 or 1) is current. The follower
    /// writes the other one, then flips this word, so a program never
    /// reads an entry being written.
    pub default_index: u32,
    /// `bpf_ktime_get_coarse_ns` time until which the follower vouches for
    /// its answers; it renews this lease several times a second, so a
    /// follower that died (even by SIGKILL) stops being trusted soon after.
    pub lease_ns: u64,
}

/// Words of `ROUTE_FILTER`: one bit per /16.
pub const ROUTE_FILTER_WORDS: u32 = 1 << 10;

/// Word and bit of `ROUTE_FILTER` for an address (stored as the programs
/// read it): its first two bytes.
pub const fn route_filter_bit(addr: u32) -> (u32, u32) {
    let n = u32::from_be(addr) >> 16;
    (n >> 6, n & 63)
}

/// [`PoolValue::kind`] of a pool prefix in the `POOLS` trie (key: prefix
/// length and address in network order): the address lies in a pool.
pub const POOL_MEMBER: u32 = 1;
/// [`PoolValue::kind`] of a /32 pool entry: the address is excluded from its
/// pool; the longest match makes it an ordinary address again.
pub const POOL_EXCLUDED: u32 = 0;
/// [`PoolValue::ifindex`] of a pool that names no external NIC: every
/// external NIC answers ARP for its addresses.
pub const POOL_ANY_NIC: u32 = 0;
/// [`PoolValue::ifindex`] of a pool whose external NIC this gateway does not
/// have (no ifindex is this large): no NIC answers ARP for its addresses.
pub const POOL_NO_NIC: u32 = u32::MAX;

/// Value of the `POOLS` trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolValue {
    /// [`POOL_MEMBER`] or [`POOL_EXCLUDED`].
    pub kind: u32,
    /// The pool's external NIC, the only one that answers ARP for its
    /// addresses (so two external networks on one gateway stay apart), or
    /// [`POOL_ANY_NIC`].
    pub ifindex: u32,
    /// The entry's own prefix length: a lookup of `addr/len` that returns
    /// a value with this length found exactly that entry (the trie's lookup
    /// is a longest match), which the loader needs to keep the spoof filter's
    /// counts exact.
    pub prefix_len: u32,
    /// Non-zero: the entry belongs to a gateway group, and its addresses are answered only
    /// until [`Meta::answer_until`] (the fence of a gateway that cannot renew its lease, in
    /// the data plane, so that it holds even when the agent is dead).
    pub fenced: u32,
}

/// Counters of one association (one per CPU in the flat `ASSOC_STATS`, shared in
/// `ASSOC_STATS_SHARED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssocStats {
    /// Packets/bytes that arrived for the floating IP (DNAT).
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Packets/bytes the instance sent out from it (SNAT).
    pub out_packets: u64,
    pub out_bytes: u64,
}

/// Per-interface facts the programs need.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// The NIC's MAC address: source of ARP replies and redirected frames.
    pub mac: [u8; 6],
    /// [`ROLE_EXTERNAL`] or [`ROLE_INTERNAL`].
    pub role: u8,
    pub _pad: u8,
}

/// Entries of `IFACE_SLOTS` (a power of two: the slot is `ifindex & (IFACE_SLOTS - 1)`).
pub const IFACE_SLOTS: u32 = 256;

/// One `IFACE_SLOTS` entry: the NIC whose slot it is (0: none) and its MAC as
/// a little-endian u64 of the six bytes (the form the programs compare frames' MACs in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    pub ifindex: u32,
    pub _pad: u32,
    pub mac: u64,
}

impl IfaceSlot {
    /// The slot of NIC `ifindex`.
    pub const fn index(ifindex: u32) -> u32 {
        ifindex & (IFACE_SLOTS - 1)
    }

    pub fn new(ifindex: u32, mac: [u8; 6]) -> Self {
        let mut bits = [0u8; 8];
        bits[..6].copy_from_slice(&mac);
        Self {
            ifindex,
            _pad: 0,
            mac: u64::from_le_bytes(bits),
        }
    }
}

pub const ROLE_EXTERNAL: u8 = 1;
pub const ROLE_INTERNAL: u8 = 2;

/// Global record in the `META` array (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`MAP_LAYOUT_VERSION`] of the maps as created.
    pub layout_version: u32,
    /// Non-zero enables aya-log output on the fast path.
    pub log_enabled: u32,
    /// Generation of the control-plane state the maps reflect.
    pub generation: u64,
    /// Identity of the state database the maps were loaded from (0: none yet).
    pub db_identity: u64,
    /// CLOCK_MONOTONIC_COARSE ns until which fenced pool entries ([`PoolValue::fenced`])
    /// are answered: the gateway's lease is known alive until then.
    pub answer_until: u64,
}

/// Folds a 32-bit one's-complement sum to 16 bits. Here, not in the eBPF
/// crate's library, because the benchmark object needs it too and linking
/// that library would pull the data plane's pinned maps into the bench object.
#[inline(always)]
pub const fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New Internet checksum after a 32-bit field changed from `old` to `new`
/// (RFC 1624, eqn. 3), words as they lie in memory. For the benchmark
/// object, which cannot link the data plane's library (see [`csum_fold`]).
#[inline(always)]
pub const fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32 + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !csum_fold(sum)
}

/// Indices into the `OUTCOMES` per-CPU array.
pub mod outcome {
    /// Address rewritten (counted once per translated packet).
    pub const TRANSLATED: u32 = 0;
    /// Passed to the kernel untouched: not floatip's business.
    pub const PASSED: u32 = 1;
    /// Dropped: destination in a pool but not associated.
    pub const DROPPED_UNASSOCIATED: u32 = 2;
    /// Dropped: source address spoofed.
    pub const DROPPED_SPOOFED: u32 = 3;
    /// ARP requests for a floating IP answered.
    pub const ARP_REPLIES: u32 = 4;
    /// Translated and redirected out of a managed NIC by the program.
    pub const REDIRECTED: u32 = 5;
    /// Translated and handed to the kernel to forward (no neighbour yet,
    /// unmanaged egress) or, with TTL about to expire, left for the kernel.
    pub const PASSED_TO_KERNEL: u32 = 6;
    /// Malformed or unexpected input.
    pub const ERRORS: u32 = 7;
    /// ICMP errors sent by the programs about datagrams for a fixed IP
    /// that cannot be forwarded (fragmentation needed, unreachable).
    pub const ICMP_ERRORS: u32 = 8;
    /// ICMP errors of the gateway's own kernel leaving an external NIC
    /// whose quote got its floating IP back (the instance had no neighbour
    /// entry: host unreachable).
    pub const QUOTES_RESTORED: u32 = 9;
    pub const COUNT: u32 = 10;

    /// Names in index order, as `floatip status` prints them.
    pub const NAMES: [&str; COUNT as usize] = [
        "translated",
        "passed",
        "dropped_unassociated",
        "dropped_spoofed",
        "arp_replies",
        "redirected",
        "passed_to_kernel",
        "errors",
        "icmp_errors",
        "quotes_restored",
    ];
}

/// What the benchmark programs `bench_gen` and `bench_cost` write into each
/// frame, read from their config array. Everything else in the frame comes
/// from the template the test run starts from: the kernel initialises a
/// live frame's page from the test run's input only when it creates the page
/// and recycles pages as they come back, so the programs write only what
/// changes between frames and what a device under test may have rewritten in
/// a page that came back (both MACs, TTL, addresses, port, checksums).
///
/// Addresses and ports are host-order numbers. Frame `n` (counted per CPU
/// since [`GenState`] was last reset) uses the pair index `p = n`, or with
/// `zipf_mask` non-zero `p = GEN_ZIPF[n & zipf_mask]` (a table of draws); it
/// is sent from `src_ip + p % src_count`, port `sport + n % flows`, to
/// `dst_ip + (p + dst_offset) % dst_count` (an offset makes a hairpin frame's
/// destination belong to another pair than its source). `dst_offset` must be
/// below `dst_count`, and every entry of a table below each count above 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// Bytes 0..8 and 8..12 of the template (destination and source MAC),
    /// read as native integers, so restoring them is two stores.
    pub eth_lo: u64,
    pub eth_hi: u32,
    /// Bytes 22..24 of the template (TTL, protocol), read as a native u16.
    pub ttl_proto: u16,
    pub sport: u16,
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_count: u32,
    pub dst_count: u32,
    pub dst_offset: u32,
    pub flows: u32,
    /// One's-complement sums (unfolded) of what the checksums cover that is
    /// the same in every frame: the IPv4 header without its checksum and
    /// addresses; the UDP pseudo-header's protocol and length, the UDP
    /// header without source port and checksum, and the payload.
    pub ip_sum: u32,
    pub udp_sum: u32,
    /// 0: pairs in turn; else the `GEN_ZIPF` table's length minus one (a
    /// power of two).
    pub zipf_mask: u32,
    /// XDP action `bench_gen` returns (XDP_TX in the generator).
    pub action: u32,
}

/// Per-CPU position of the generator (`GEN_STATE`), all zero at the start:
/// the frame number and the indices it implies, kept as wrapping counters
/// so the programs never divide.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenState {
    pub seq: u64,
    /// `seq % src_count`, `seq % dst_count`, `seq % flows`.
    pub src_i: u32,
    pub dst_i: u32,
    pub port_i: u32,
    pub _pad: u32,
}

/// Value of the benchmark's `MIN_NAT` map (key: destination address as it
/// lies in the frame): everything the minimal NAT needs for a hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinNatEntry {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The new destination address, network order.
    pub addr: u32,
    /// Egress interface (a key of the program's devmap).
    pub ifindex: u32,
}

/// The benchmark sink keeps every `1 << SINK_SAMPLE_SHIFT`-th frame it
/// counts (per CPU) in `SINK_SAMPLES`, the last [`SINK_SAMPLE_SLOTS`] of them.
pub const SINK_SAMPLE_SHIFT: u32 = 12;
pub const SINK_SAMPLE_SLOTS: u32 = 8;

/// One frame as the sink saw it: its length and its first 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSample {
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; 64],
}

impl Default for FrameSample {
    fn default() -> Self {
        Self {
            len: 0,
            _pad: 0,
            data: [0; 64],
        }
    }
}

// The layouts both sides rely on, checked when either side compiles: a
// field added, removed or resized without its padding fails the build here.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<NatEntry>() == 32 && align_of::<NatEntry>() == 4);
    assert!(size_of::<IfaceSlot>() == 16 && align_of::<IfaceSlot>() == 8);
    assert!(size_of::<NextHop>() == 24 && align_of::<NextHop>() == 4);
    assert!(size_of::<Routing>() == 16 && align_of::<Routing>() == 8);
    assert!(size_of::<PoolValue>() == 16 && align_of::<PoolValue>() == 4);
    assert!(size_of::<AssocStats>() == 32 && align_of::<AssocStats>() == 8);
    assert!(size_of::<IfaceInfo>() == 8 && align_of::<IfaceInfo>() == 1);
    assert!(size_of::<Meta>() == 32 && align_of::<Meta>() == 8);
    assert!(size_of::<GenConfig>() == 56 && align_of::<GenConfig>() == 8);
    assert!(size_of::<GenState>() == 24 && align_of::<GenState>() == 8);
    assert!(size_of::<MinNatEntry>() == 20 && align_of::<MinNatEntry>() == 4);
    assert!(size_of::<FrameSample>() == 72 && align_of::<FrameSample>() == 4);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), hold only integers and have no
    // implicit padding (explicit `_pad` fields fill every hole).
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for IfaceSlot {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for Routing {}
    unsafe impl aya::Pod for PoolValue {}
    unsafe impl aya::Pod for AssocStats {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for GenConfig {}
    unsafe impl aya::Pod for GenState {}
    unsafe impl aya::Pod for MinNatEntry {}
    unsafe impl aya::Pod for FrameSample {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn filter_buckets_cover_the_prefix() {
        assert_eq!(spoof_filter_bucket(key([203, 0, 113, 7])), 203 << 8);
        assert_eq!(
            spoof_filter_buckets(key([203, 0, 113, 0]), 24),
            203 << 8..=203 << 8
        );
        // A /12 spans 16 /16s, from its first.
        assert_eq!(
            spoof_filter_buckets(key([172, 16, 0, 0]), 12),
            (172 << 8) + 16..=(172 << 8) + 31
        );
        assert_eq!(spoof_filter_buckets(key([0, 0, 0, 0]), 0), 0..=0xffff);
        assert_eq!(
            spoof_filter_buckets(key([10, 1, 2, 3]), 32),
            (10 << 8) + 1..=(10 << 8) + 1
        );
    }

    #[test]
    fn per_cpu_counters_where_they_fit() {
        // The default size: per-CPU up to 120 CPUs.
        assert!(per_cpu_counters_fit(DEFAULT_MAX_ASSOCIATIONS, 120));
        assert!(!per_cpu_counters_fit(DEFAULT_MAX_ASSOCIATIONS, 121));
        // A million: per-CPU on a small gateway, shared on a large one.
        assert!(per_cpu_counters_fit(1_000_000, 2));
        assert!(per_cpu_counters_fit(1_000_000, 7));
        assert!(!per_cpu_counters_fit(1_000_000, 8));
        assert!(!per_cpu_counters_fit(1_000_000, 64));
        // Every slot on every CPU in the flat array, as the kernel charges its values (see the
        // memory benchmark, which adds the header and page rounding).
        assert_eq!(per_cpu_counters_bytes(1_000_000, 2), 68_000_064);
        assert_eq!(per_cpu_counter_entries(1_000_000, 2), 2_125_002);
    }
}
