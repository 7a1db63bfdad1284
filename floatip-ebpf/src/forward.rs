//! Forwarding: before the rewrite, ask the kernel's FIB where the packet
//! goes once translated (so a packet for the gateway itself is known before
//! it is touched). When the answer is complete (route and neighbour), the
//! entry point checks that the egress is a NIC floatip manages and then has
//! [`to_next_hop`] set both MACs and decrement the TTL before redirecting.
//! Otherwise the translated packet goes to the kernel, which forwards it
//! (this needs net.ipv4.ip_forward=1 and rp_filter loose or off on the
//! gateway).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::generated::bpf_fib_lookup,
};
use floatip_common::NextHop;

use crate::{
    checksum,
    frame::{Frame, Window, mac_bits},
};

const AF_INET: u8 = 2;

/// Where a translated packet leaves and with which MACs.
pub struct Route {
    pub ifindex: u32,
    // MACs as `frame::mac_bits` holds them.
    smac: u64,
    dmac: u64,
}

/// Why floatip leaves a packet to the kernel instead of forwarding it
/// itself: mostly why the FIB gave no complete answer (a
/// `BPF_FIB_LKUP_RET_*` code). A number, not a string: LLVM packs a
/// string's pointer into the verdict with bit masks the verifier rejects.
#[derive(Clone, Copy)]
pub struct Miss {
    rc: i64,
    /// The egress MTU when `rc` is FRAG_NEEDED.
    mtu: u16,
}

impl Miss {
    /// Not looked up: the frame is VLAN-tagged.
    pub const TAGGED: Miss = Miss::of(-2);
    /// Not looked up: the TTL expires here.
    pub const TTL_EXPIRES: Miss = Miss::of(-3);
    /// Routed, but the header carries options: the kernel's forwarding
    /// processes them as a router must (see `translate::route_via`).
    pub const OPTIONS: Miss = Miss::of(-4);

    const fn of(rc: i64) -> Miss {
        Miss { rc, mtu: 0 }
    }

    /// The ICMP destination-unreachable code (and MTU) a router answers
    /// this miss with: host unreachable (1) for an unreachable route,
    /// administratively prohibited (13), fragmentation needed (4) with DF.
    #[inline(always)]
    pub fn unreachable_code(&self, may_not_fragment: bool) -> Option<(u8, u16)> {
        match self.rc {
            2 => Some((1, 0)),
            3 => Some((13, 0)),
            8 if may_not_fragment => Some((4, self.mtu)),
            _ => None,
        }
    }

    /// The destination is not forwarded: it is local to the gateway (or
    /// broadcast, or has no route at all).
    #[inline(always)]
    pub fn not_forwarded(&self) -> bool {
        self.rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64
    }

    /// The FIB said "larger than the egress MTU".
    #[inline(always)]
    pub fn frag_needed(&self) -> bool {
        self.rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64
    }

    /// The kernel answers the packet with an ICMP error (or drops it, for
    /// a blackhole route) instead of forwarding it: an unreachable or
    /// prohibited route, or too big for the egress MTU with DF set.
    #[inline(always)]
    pub fn answered_with_error(&self, may_not_fragment: bool) -> bool {
        matches!(self.rc, 1..=3) || (may_not_fragment && self.frag_needed())
    }

    /// Why the kernel should forward the packet instead.
    #[inline(always)]
    pub fn why(&self) -> &'static str {
        match self.rc {
            1..=3 => "blackhole, unreachable or prohibited route",
            4 => "not forwarded (local destination or no route)",
            5 => "forwarding disabled on the ingress device",
            7 => "no neighbour entry yet",
            8 => "larger than the egress MTU",
            9 => "no source address for the egress",
            -1 => "header out of reach",
            -2 => "VLAN-tagged",
            -3 => "TTL expires here",
            -4 => "IP options: the kernel forwards it",
            _ => "FIB lookup failed",
        }
    }
}

/// The cached answer of `hop` for a packet of `tot_len` bytes, when it is
/// current (its epoch is the follower's live `epoch`, never 0) and the
/// packet fits the egress MTU; `None`: ask the FIB.
#[inline(always)]
pub fn cached(hop: &NextHop, epoch: u32, tot_len: usize) -> Option<Route> {
    if epoch == 0 || hop.epoch != epoch || tot_len > hop.mtu as usize {
        return None;
    }
    Some(Route {
        ifindex: hop.ifindex,
        smac: mac_bits(&hop.smac),
        dmac: mac_bits(&hop.dmac),
    })
}

/// Looks the packet whose IPv4 header is at `l3` (arrived on `ifindex`) up
/// in the FIB as it will be once translated: from `src` to `dst`.
#[inline(always)]
pub fn route<F: Frame>(f: &F, ifindex: u32, l3: usize, src: u32, dst: u32) -> Result<Route, Miss> {
    let h = Window::<20>::at(f, l3).map_err(|()| Miss::of(-1))?;
    let mut params = core::mem::MaybeUninit::<FibParams>::uninit();
    let p = zero(&mut params);
    p.family = AF_INET;
    p.l4_protocol = h.u8(9);
    p.__bindgen_anon_1.tot_len = u16::from_be(h.u16(2));
    p.ifindex = ifindex;
    p.__bindgen_anon_2.tos = h.u8(1);
    p.__bindgen_anon_3.ipv4_src = src;
    p.__bindgen_anon_4.ipv4_dst = dst;
    let rc = unsafe { bpf_fib_lookup(f.ctx_ptr(), p, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // On FRAG_NEEDED the kernel leaves the MTU where tot_len was.
        return Err(Miss {
            rc,
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        });
    }
    Ok(Route {
        ifindex: p.ifindex,
        smac: mac_bits(&p.smac),
        dmac: mac_bits(&p.dmac),
    })
}

/// Readies the frame for `route`'s next hop: both MACs, and the TTL
/// decremented with the IPv4 checksum fixed as a router does.
#[inline(always)]
pub fn to_next_hop<F: Frame>(f: &F, l3: usize, route: &Route) -> Result<(), ()> {
    let h = Window::<20>::at(f, l3)?;
    // TTL is the high byte of the 16-bit word at 8 (TTL, protocol); the
    // translation passed TTL <= 1 to the kernel, so this cannot wrap.
    let word = h.u16(8);
    h.set_u8(8, h.u8(8).wrapping_sub(1));
    h.set_u16(10, checksum::replace2(h.u16(10), word, h.u16(8)));
    let eth = Window::<12>::at(f, 0)?;
    eth.set_mac(0, route.dmac);
    eth.set_mac(6, route.smac);
    Ok(())
}

/// Zeroes the lookup parameters in place with eight 8-byte stores: a plain
/// `zeroed()` (or a zeroed value moved into place) becomes a call to
/// `memset` in BPF.
#[inline(always)]
fn zero(p: &mut core::mem::MaybeUninit<FibParams>) -> &mut FibParams {
    const WORDS: usize = core::mem::size_of::<FibParams>() / 8;
    const _: () = assert!(core::mem::size_of::<FibParams>().is_multiple_of(8));
    let words = p.as_mut_ptr().cast::<u64>();
    for i in 0..WORDS {
        // Volatile so LLVM does not fold the stores back into a memset.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    unsafe { p.assume_init_mut() }
}
