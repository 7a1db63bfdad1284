//! Forwarding: after the rewrite, ask the kernel's FIB where the translated
//! packet goes. When the answer is complete (route and neighbour), the entry
//! point checks that the egress is a NIC floatip manages and then has
//! [`rewrite`] set both MACs and decrement the TTL before redirecting.
//! Otherwise the translated packet goes to the kernel, which forwards it
//! (this needs net.ipv4.ip_forward=1 and rp_filter loose or off on the
//! gateway).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
};

use crate::{
    checksum,
    frame::{Frame, Window},
};

const AF_INET: u8 = 2;

/// Where a translated packet leaves and with which MACs.
pub struct Route {
    pub ifindex: u32,
    // MACs as three 16-bit words: see [`mac_words`].
    smac: [u16; 3],
    dmac: [u16; 3],
}

/// Looks the translated packet (IPv4 header at `l3`, arrived on `ifindex`)
/// up in the FIB.
#[inline(always)]
pub fn route<F: Frame>(f: &F, ifindex: u32, l3: usize) -> Option<Route> {
    let h = Window::<20>::at(f, l3).ok()?;
    let mut params = core::mem::MaybeUninit::<FibParams>::uninit();
    let p = zero(&mut params);
    p.family = AF_INET;
    p.l4_protocol = h.u8(9);
    p.__bindgen_anon_1.tot_len = u16::from_be(h.u16(2));
    p.ifindex = ifindex;
    p.__bindgen_anon_2.tos = h.u8(1);
    p.__bindgen_anon_3.ipv4_src = h.u32(12);
    p.__bindgen_anon_4.ipv4_dst = h.u32(16);
    let rc = unsafe { bpf_fib_lookup(f.ctx_ptr(), p, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(Route {
        ifindex: p.ifindex,
        smac: mac_words(&p.smac),
        dmac: mac_words(&p.dmac),
    })
}

/// Readies the frame for `route`: both MACs, and the TTL decremented with
/// the IPv4 checksum fixed as a router does.
#[inline(always)]
pub fn rewrite<F: Frame>(f: &F, l3: usize, route: &Route) -> Result<(), ()> {
    let h = Window::<20>::at(f, l3)?;
    // TTL is the high byte of the 16-bit word at 8 (TTL, protocol); the
    // translation passed TTL <= 1 to the kernel, so this cannot wrap.
    let word = h.u16(8);
    h.set_u8(8, h.u8(8).wrapping_sub(1));
    h.set_u16(10, checksum::replace2(h.u16(10), word, h.u16(8)));
    let eth = Window::<12>::at(f, 0)?;
    eth.set_mac_words(0, route.dmac);
    eth.set_mac_words(6, route.smac);
    Ok(())
}

/// Reads a MAC of the lookup parameters (on the stack, 2-byte aligned) as
/// three 16-bit loads. Volatile keeps LLVM from merging them into a
/// misaligned 4-byte stack load, which the verifier rejects even where
/// misaligned packet access is fine.
#[inline(always)]
fn mac_words(mac: &[u8; 6]) -> [u16; 3] {
    let w = mac.as_ptr().cast::<u16>();
    unsafe {
        [
            core::ptr::read_volatile(w),
            core::ptr::read_volatile(w.add(1)),
            core::ptr::read_volatile(w.add(2)),
        ]
    }
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
