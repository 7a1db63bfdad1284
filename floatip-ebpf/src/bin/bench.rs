//! Programs for benchmarks and tests only, never attached by `floatip`.
//!
//! - `bench_pass`: returns XDP_PASS, the floor every program cost is measured against.
//! - `bench_redirect`: redirects every frame through `BENCH_TX[0]`, no translation: the
//!   ceiling of any XDP forwarder on a machine.
//! - `bench_drop`: the sink, counts frames in `BENCH_COUNT` and drops them.
//! - `bench_gen`: the traffic generator, run through `BPF_PROG_TEST_RUN` with live frames.
//! - `bench_cost`: writes the same kind of frame, then tail-calls the program under test
//!   in `BENCH_JUMP[0]`, so every repetition of a test run sees a fresh packet.
//! - `bench_lookup`, `bench_fib`: floors for the program cost, run behind `bench_cost`:
//!   one hash-map lookup of the destination address, and one `bpf_fib_lookup` of the
//!   frame, each then XDP_PASS. What one such step costs on the machine bounds what
//!   any design built on them can reach.
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
    helpers::generated::{bpf_fib_lookup, bpf_skb_vlan_push},
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, HashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use floatip_common::{GenConfig, csum_fold as fold};

/// Length of every generated frame: a 64-byte Ethernet frame without its FCS.
const FRAME_LEN: usize = 60;
const IP_TOT_LEN: u16 = 46;
const UDP_LEN: u16 = 26;
const TTL: u16 = 64;
const IPPROTO_UDP: u16 = 17;

#[map(name = "BENCH_TX")]
static BENCH_TX: DevMap = DevMap::with_max_entries(1, 0);

#[map(name = "BENCH_COUNT")]
static BENCH_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Per-CPU frame sequence number; spreads flows without atomics.
#[map(name = "GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    if let Some(c) = BENCH_COUNT.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    match write_frame(&ctx) {
        Some(cfg) => cfg.action,
        None => xdp_action::XDP_ABORTED,
    }
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

#[inline(always)]
unsafe fn put<T>(base: usize, off: usize, v: T) {
    unsafe { core::ptr::write_unaligned((base + off) as *mut T, v) }
}

/// Writes every byte of a UDP/IPv4 frame for the next sequence number:
/// with live frames the kernel recycles pages without resetting them, so
/// nothing of what a previous run (or the device under test) left may
/// survive. Checksums are computed from scratch.
#[inline(always)]
fn write_frame(ctx: &XdpContext) -> Option<GenConfig> {
    let cfg = *GEN_CONFIG.get(0)?;
    let seq_ptr = GEN_SEQ.get_ptr_mut(0)?;
    let seq = unsafe {
        let s = *seq_ptr;
        *seq_ptr = s + 1;
        s
    };
    let data = ctx.data();
    if data + FRAME_LEN > ctx.data_end() {
        return None;
    }
    // `max(1)` also proves the divisors non-zero, so no panic path is emitted.
    let src = cfg
        .src_ip
        .wrapping_add((seq % cfg.src_count.max(1) as u64) as u32);
    let dst = cfg
        .dst_ip
        .wrapping_add(((seq + cfg.dst_offset as u64) % cfg.dst_count.max(1) as u64) as u32);
    let sport = cfg
        .sport
        .wrapping_add((seq % cfg.flows.max(1) as u64) as u16);
    let id = seq as u16;
    let addr_sum = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff);
    let ip_sum = 0x4500
        + IP_TOT_LEN as u32
        + id as u32
        + 0x4000
        + ((TTL << 8) | IPPROTO_UDP) as u32
        + addr_sum;
    let ip_check = !fold(ip_sum);
    // Pseudo-header (addresses, protocol, length) + header; the payload is zeros.
    let udp_sum = addr_sum
        + IPPROTO_UDP as u32
        + UDP_LEN as u32
        + sport as u32
        + cfg.dport as u32
        + UDP_LEN as u32;
    let mut udp_check = !fold(udp_sum);
    if udp_check == 0 {
        udp_check = 0xffff;
    }
    unsafe {
        put(data, 0, cfg.dst_mac);
        put(data, 6, cfg.src_mac);
        put(data, 12, 0x0800u16.to_be());
        put(data, 14, 0x4500u16.to_be());
        put(data, 16, IP_TOT_LEN.to_be());
        put(data, 18, id.to_be());
        put(data, 20, 0x4000u16.to_be());
        put(data, 22, ((TTL << 8) | IPPROTO_UDP).to_be());
        put(data, 24, ip_check.to_be());
        put(data, 26, src.to_be());
        put(data, 30, dst.to_be());
        put(data, 34, sport.to_be());
        put(data, 36, cfg.dport.to_be());
        put(data, 38, UDP_LEN.to_be());
        put(data, 40, udp_check.to_be());
        put(data, 42, 0u64);
        put(data, 50, 0u64);
        put(data, 58, 0u16);
    }
    Some(cfg)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
