//! Programs for benchmarks and tests only, never attached by `floatip`.
//!
//! - `bench_pass`: returns XDP_PASS, the floor every program cost is measured against.
//! - `bench_redirect`: redirects every frame through `BENCH_TX[0]`, no translation: the
//!   ceiling of any XDP forwarder on a machine.
//! - `bench_drop`: the sink, counts frames in `BENCH_COUNT`, keeps every 4096th of them
//!   in `SINK_SAMPLES` (so the benchmark can check what arrived) and drops them.
//! - `bench_gen`: the traffic generator, run through `BPF_PROG_TEST_RUN` with live frames:
//!   it turns the test run's template frame into the next one (see `GenConfig`).
//! - `bench_cost`: does the same to the test run's frame, then tail-calls the program
//!   under test in `BENCH_JUMP[0]`, so every repetition of a test run sees a fresh packet.
//! - `bench_lookup`, `bench_fib`: floors for the program cost, run behind `bench_cost`:
//!   one hash-map lookup of the destination address, and one `bpf_fib_lookup` of the
//!   frame, each then XDP_PASS. What one such step costs on the machine bounds what
//!   any design built on them can reach.
//! - `bench_min_nat`: the minimal NAT, the floor any NAT can reach: one hash lookup of
//!   the destination (`MIN_NAT`) whose value holds the new address, both MACs and the
//!   egress; rewrites the destination and both checksums incrementally, sets the MACs
//!   and redirects through `MIN_NAT_TX`. Nothing else: no TTL, counters or checks.
//! - `bench_nat_mac`, `bench_nat_checks`, `bench_nat_counted`, `bench_nat_leased`: the
//!   minimal NAT plus, cumulatively, what a router-grade hit adds, each step as floatip's
//!   data plane does it: the ingress MAC check (the ingress NIC's slot in `BENCH_IFACES`,
//!   an array, as `IFACE_SLOTS`); the IPv4 header checksum verified and the TTL checked and decremented;
//!   a per-CPU outcome counter and the pair's per-CPU packet and byte counters
//!   (`BENCH_PAIR_STATS`); the next-hop lease read with the coarse clock (`BENCH_LEASE`).
//!   The staircase of their costs tells what each step costs on the machine.
//! - `test_tc_vlan` (TC): puts an 802.1Q tag (VID 100) into the skb's metadata, where TC
//!   ingress finds a frame's outer tag, then tail-calls the program under test in
//!   `TEST_TC_JUMP[0]`: `BPF_PROG_TEST_RUN` cannot set that metadata itself.
//!
//! Unlike the data plane, these programs bounds-check the few bytes they touch directly
//! (`data + n > data_end`): linking the data plane's library for its `Window` would pull
//! its pinned maps into this object.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT, bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::{
        bpf_fib_lookup, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_skb_vlan_push,
    },
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, DevMapHash, HashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use floatip_common::{
    AssocStats, FrameSample, GenConfig, GenState, IFACE_SLOTS, IfaceSlot, MinNatEntry,
    SINK_SAMPLE_SHIFT, SINK_SAMPLE_SLOTS, csum_fold as fold, csum_replace4,
};

/// Length of every generated frame: a 64-byte Ethernet frame without its FCS.
const FRAME_LEN: usize = 60;

#[map(name = "BENCH_TX")]
static BENCH_TX: DevMap = DevMap::with_max_entries(1, 0);

#[map(name = "BENCH_COUNT")]
static BENCH_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Per-CPU position in the sequence of frames; spreads flows without atomics.
#[map(name = "GEN_STATE")]
static GEN_STATE: PerCpuArray<GenState> = PerCpuArray::with_max_entries(1, 0);

/// Pair indices drawn from a popularity distribution; the loader sizes it.
#[map(name = "GEN_ZIPF")]
static GEN_ZIPF: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "SINK_SAMPLES")]
static SINK_SAMPLES: PerCpuArray<FrameSample> = PerCpuArray::with_max_entries(SINK_SAMPLE_SLOTS, 0);

/// Destination address as it lies in the frame -> the minimal NAT's answer.
#[map(name = "MIN_NAT")]
static MIN_NAT: HashMap<u32, MinNatEntry> = HashMap::with_max_entries(1024, 0);

#[map(name = "MIN_NAT_TX")]
static MIN_NAT_TX: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// The ingress NICs' MACs by slot, as the data plane's `IFACE_SLOTS`, for the staircase's
/// MAC check.
#[map(name = "BENCH_IFACES")]
static BENCH_IFACES: Array<IfaceSlot> = Array::with_max_entries(IFACE_SLOTS, 0);

#[map(name = "BENCH_OUTCOMES")]
static BENCH_OUTCOMES: PerCpuArray<u64> = PerCpuArray::with_max_entries(16, 0);

/// One slot per pair (a hash of the new address) per CPU, flat as the data plane's
/// `ASSOC_STATS`; the loader sizes it (a power of two per CPU).
#[map(name = "BENCH_PAIR_STATS")]
static BENCH_PAIR_STATS: Array<AssocStats> = Array::with_max_entries(1, 0);

/// The lease deadline the staircase's last step compares the coarse clock with.
// Set by the loader: BENCH_PAIR_STATS's size less one.
#[unsafe(no_mangle)]
static PAIR_SLOT_MASK: u32 = 0;

#[map(name = "BENCH_LEASE")]
static BENCH_LEASE: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_JUMP")]
static BENCH_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Keys for `bench_lookup`: addresses as they lie in the frame.
#[map(name = "BENCH_KEYS")]
static BENCH_KEYS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

#[map(name = "TEST_TC_JUMP")]
static TEST_TC_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[classifier]
pub fn test_tc_vlan(ctx: TcContext) -> i32 {
    const ETH_P_8021Q: u16 = 0x8100;
    if unsafe { bpf_skb_vlan_push(ctx.skb.skb.cast(), ETH_P_8021Q.to_be(), 100) } != 0 {
        return TC_ACT_SHOT as i32;
    }
    // Only returns when the slot is empty.
    unsafe { TEST_TC_JUMP.tail_call(&ctx, 0) };
    TC_ACT_SHOT as i32
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    BENCH_TX.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

#[xdp]
pub fn bench_drop(ctx: XdpContext) -> u32 {
    if let Some(c) = BENCH_COUNT.get_ptr_mut(0) {
        let n = unsafe { *c };
        unsafe { *c = n + 1 };
        if n & ((1 << SINK_SAMPLE_SHIFT) - 1) == 0 {
            sample(&ctx, (n >> SINK_SAMPLE_SHIFT) as u32 % SINK_SAMPLE_SLOTS);
        }
    }
    xdp_action::XDP_DROP
}

/// Keeps the frame's length and first 60 bytes (all of a generated frame) in `slot`.
#[inline(always)]
fn sample(ctx: &XdpContext, slot: u32) {
    let Some(s) = SINK_SAMPLES.get_ptr_mut(slot) else {
        return;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    let s = unsafe { &mut *s };
    s.len = (end - data) as u32;
    if data + FRAME_LEN > end {
        return;
    }
    let out = s.data.as_mut_ptr();
    unsafe {
        for i in 0..7 {
            let w = core::ptr::read_unaligned((data + 8 * i) as *const u64);
            core::ptr::write_unaligned(out.add(8 * i).cast::<u64>(), w);
        }
        let w = core::ptr::read_unaligned((data + 56) as *const u32);
        core::ptr::write_unaligned(out.add(56).cast::<u32>(), w);
    }
}

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    write_frame(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[xdp]
pub fn bench_cost(ctx: XdpContext) -> u32 {
    if write_frame(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // Only returns when the slot is empty.
    unsafe { BENCH_JUMP.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// One hash lookup of the destination address; XDP_PASS on a hit, XDP_DROP
/// on a miss (so a run can check it measured hits).
#[xdp]
pub fn bench_lookup(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    if data + 34 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let dst = unsafe { core::ptr::read_unaligned((data + 30) as *const u32) };
    match unsafe { BENCH_KEYS.get(&dst) } {
        Some(_) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_DROP,
    }
}

/// One FIB lookup of the frame as floatip's forwarding stage makes it;
/// XDP_PASS when it succeeded (route and neighbour), XDP_DROP otherwise.
#[xdp]
pub fn bench_fib(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    if data + 34 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // Zeroed with volatile stores: `zeroed()` would add a call to memset,
    // which the data plane avoids the same way.
    let mut p = core::mem::MaybeUninit::<FibParams>::uninit();
    let words = p.as_mut_ptr().cast::<u64>();
    for i in 0..core::mem::size_of::<FibParams>() / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    let p = unsafe { p.assume_init_mut() };
    p.family = 2;
    unsafe {
        p.l4_protocol = *((data + 23) as *const u8);
        p.__bindgen_anon_1.tot_len =
            u16::from_be(core::ptr::read_unaligned((data + 16) as *const u16));
        p.__bindgen_anon_3.ipv4_src = core::ptr::read_unaligned((data + 26) as *const u32);
        p.__bindgen_anon_4.ipv4_dst = core::ptr::read_unaligned((data + 30) as *const u32);
        p.ifindex = (*ctx.ctx).ingress_ifindex;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The minimal NAT (see the module doc); XDP_PASS for whatever it does not translate.
#[xdp]
pub fn bench_min_nat(ctx: XdpContext) -> u32 {
    nat::<0>(&ctx)
}

#[xdp]
pub fn bench_nat_mac(ctx: XdpContext) -> u32 {
    nat::<1>(&ctx)
}

#[xdp]
pub fn bench_nat_checks(ctx: XdpContext) -> u32 {
    nat::<2>(&ctx)
}

#[xdp]
pub fn bench_nat_counted(ctx: XdpContext) -> u32 {
    nat::<3>(&ctx)
}

#[xdp]
pub fn bench_nat_leased(ctx: XdpContext) -> u32 {
    nat::<4>(&ctx)
}

/// The minimal NAT with the first `STEPS` steps of the staircase (see the module doc).
#[inline(always)]
fn nat<const STEPS: u32>(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 34 > end {
        return xdp_action::XDP_PASS;
    }
    // IPv4 without options: EtherType, then version and header length.
    let (ethertype, vihl) = unsafe {
        (
            core::ptr::read_unaligned((data + 12) as *const u16),
            *((data + 14) as *const u8),
        )
    };
    if ethertype != 0x0800u16.to_be() || vihl != 0x45 {
        return xdp_action::XDP_PASS;
    }
    let old = unsafe { core::ptr::read_unaligned((data + 30) as *const u32) };
    let Some(e) = MIN_NAT.get_ptr(&old) else {
        return xdp_action::XDP_PASS;
    };
    let e = unsafe { &*e };
    if STEPS >= 1 {
        // Addressed to the ingress NIC's own MAC.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        let dst = unsafe { core::ptr::read_unaligned(data as *const u64) } & 0xffff_ffff_ffff;
        if !BENCH_IFACES
            .get(IfaceSlot::index(ifindex))
            .is_some_and(|s| s.ifindex == ifindex && s.mac == dst)
        {
            return xdp_action::XDP_PASS;
        }
    }
    if STEPS >= 2 {
        // The header checksum holds, the TTL allows forwarding; the TTL goes down by one.
        let mut sum = 0u32;
        for i in 0..10 {
            sum +=
                u32::from(unsafe { core::ptr::read_unaligned((data + 14 + 2 * i) as *const u16) });
        }
        if fold(sum) != 0xffff {
            return xdp_action::XDP_PASS;
        }
        let ttl = unsafe { *((data + 22) as *const u8) };
        if ttl <= 1 {
            return xdp_action::XDP_PASS;
        }
        unsafe {
            let check = core::ptr::read_unaligned((data + 24) as *const u16);
            let (before, after) = (
                core::ptr::read_unaligned((data + 22) as *const u16),
                u16::from_ne_bytes([ttl - 1, *((data + 23) as *const u8)]),
            );
            *((data + 22) as *mut u8) = ttl - 1;
            let c = (!check) as u32 + (!before) as u32 + after as u32;
            put(data, 24, !fold(c));
        }
    }
    if STEPS >= 3 {
        if let Some(n) = BENCH_OUTCOMES.get_ptr_mut(0) {
            unsafe { *n += 1 };
        }
        // Scattered by a hash of the address, as the loader scatters the data plane's
        // slots: consecutive pairs in consecutive slots would let the prefetcher hide
        // the misses a real spread of pairs has.
        let mask = unsafe { core::ptr::read_volatile(&PAIR_SLOT_MASK) };
        let slot = u32::from_be(e.addr).wrapping_mul(0x9e37_79b1) & mask;
        let cpu = unsafe { bpf_get_smp_processor_id() };
        if let Some(s) = BENCH_PAIR_STATS.get_ptr_mut(cpu.wrapping_mul(mask + 1).wrapping_add(slot))
        {
            unsafe {
                (*s).in_packets += 1;
                (*s).in_bytes += (end - data) as u64;
            }
        }
    }
    if STEPS >= 4
        && BENCH_LEASE
            .get(0)
            .is_none_or(|l| unsafe { bpf_ktime_get_coarse_ns() } >= *l)
    {
        return xdp_action::XDP_PASS;
    }
    let new = e.addr;
    unsafe {
        put(data, 30, new);
        let check = core::ptr::read_unaligned((data + 24) as *const u16);
        put(data, 24, csum_replace4(check, old, new));
        match *((data + 23) as *const u8) {
            // UDP: a zero checksum means none and stays zero.
            17 if data + 42 <= end => {
                let check = core::ptr::read_unaligned((data + 40) as *const u16);
                if check != 0 {
                    let c = csum_replace4(check, old, new);
                    put(data, 40, if c == 0 { 0xffff } else { c });
                }
            }
            6 if data + 52 <= end => {
                let check = core::ptr::read_unaligned((data + 50) as *const u16);
                put(data, 50, csum_replace4(check, old, new));
            }
            _ => {}
        }
        let macs = e.dst_mac.as_ptr();
        put(data, 0, core::ptr::read_unaligned(macs.cast::<u64>()));
        put(
            data,
            8,
            core::ptr::read_unaligned(macs.add(8).cast::<u32>()),
        );
    }
    MIN_NAT_TX
        .redirect(e.ifindex, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
unsafe fn put<T>(base: usize, off: usize, v: T) {
    unsafe { core::ptr::write_unaligned((base + off) as *mut T, v) }
}

/// Turns the frame into the next one of the sequence (see `GenConfig`):
/// restores what a device under test may have rewritten in a recycled page
/// (both MACs, TTL) and writes the addresses, the source port and both
/// checksums, the latter from the config's sums of everything else. Nothing
/// else of the template changes. Returns the configured action.
#[inline(always)]
fn write_frame(ctx: &XdpContext) -> Option<u32> {
    let cfg = unsafe { &*GEN_CONFIG.get_ptr(0)? };
    let st = unsafe { &mut *GEN_STATE.get_ptr_mut(0)? };
    let data = ctx.data();
    if data + FRAME_LEN > ctx.data_end() {
        return None;
    }
    let (s, d) = if cfg.zipf_mask == 0 {
        (st.src_i, st.dst_i)
    } else {
        let p = GEN_ZIPF
            .get(st.seq as u32 & cfg.zipf_mask)
            .copied()
            .unwrap_or(0);
        (p, p)
    };
    // No-ops unless a table entry exceeds a count of 1.
    let s = if s < cfg.src_count { s } else { 0 };
    let d = if d < cfg.dst_count { d } else { 0 };
    let d = d + cfg.dst_offset;
    let d = if d >= cfg.dst_count {
        d - cfg.dst_count
    } else {
        d
    };
    let sport = cfg.sport.wrapping_add(st.port_i as u16);
    st.seq += 1;
    st.src_i = next(st.src_i, cfg.src_count);
    st.dst_i = next(st.dst_i, cfg.dst_count);
    st.port_i = next(st.port_i, cfg.flows);
    let src = cfg.src_ip.wrapping_add(s);
    let dst = cfg.dst_ip.wrapping_add(d);
    let addr_sum = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff);
    let ip_check = !fold(cfg.ip_sum + addr_sum);
    let udp_check = match !fold(cfg.udp_sum + addr_sum + sport as u32) {
        0 => 0xffff,
        c => c,
    };
    unsafe {
        put(data, 0, cfg.eth_lo);
        put(data, 8, cfg.eth_hi);
        put(data, 22, cfg.ttl_proto);
        put(data, 24, ip_check.to_be());
        put(data, 26, src.to_be());
        put(data, 30, dst.to_be());
        put(data, 34, sport.to_be());
        put(data, 40, udp_check.to_be());
    }
    Some(cfg.action)
}

/// `i + 1` wrapped at `count` (a count of 0 counts as 1).
#[inline(always)]
fn next(i: u32, count: u32) -> u32 {
    if i + 1 >= count { 0 } else { i + 1 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
