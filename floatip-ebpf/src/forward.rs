//! Forwarding: after the rewrite, ask the kernel's FIB where the translated
//! packet goes. When the answer is complete (route and neighbour) and the
//! egress is a NIC floatip manages, rewrite both MACs, decrement the TTL and
//! let the entry point redirect. Otherwise the translated packet goes to the
//! kernel, which forwards it (this needs net.ipv4.ip_forward=1 and rp_filter
//! loose or off on the gateway).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
};

use crate::{
    checksum,
    frame::{Frame, ptr_at, read_u8, read_u16, read_u32, write_u8, write_u16},
    maps,
};

const AF_INET: u8 = 2;

/// Looks the translated packet up; on success rewrites MACs and TTL and
/// returns the egress ifindex.
#[inline(always)]
pub fn prepare<F: Frame>(f: &F, ifindex: u32, l3: usize) -> Option<u32> {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = read_u8(f, l3 + 9).ok()?;
    p.__bindgen_anon_1.tot_len = u16::from_be(read_u16(f, l3 + 2).ok()?);
    p.ifindex = ifindex;
    p.__bindgen_anon_2.tos = read_u8(f, l3 + 1).ok()?;
    p.__bindgen_anon_3.ipv4_src = read_u32(f, l3 + 12).ok()?;
    p.__bindgen_anon_4.ipv4_dst = read_u32(f, l3 + 16).ok()?;
    let rc = unsafe {
        bpf_fib_lookup(
            f.ctx_ptr(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    maps::iface(p.ifindex)?;
    // TTL sits in the high byte of the word at l3+8 (TTL, protocol).
    let word = read_u16(f, l3 + 8).ok()?;
    let ttl = read_u8(f, l3 + 8).ok()?;
    write_u8(f, l3 + 8, ttl - 1).ok()?;
    let word2 = read_u16(f, l3 + 8).ok()?;
    let c = read_u16(f, l3 + 10).ok()?;
    write_u16(f, l3 + 10, checksum::replace2(c, word, word2)).ok()?;
    unsafe {
        *ptr_at::<F, [u8; 6]>(f, 0).ok()? = p.dmac;
        *ptr_at::<F, [u8; 6]>(f, 6).ok()? = p.smac;
    }
    Some(p.ifindex)
}
