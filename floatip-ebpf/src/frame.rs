//! The one place that touches packet memory: bounds-checked access, and the
//! L4 checksum update that differs between XDP (plain bytes) and TC (skbs
//! whose checksum may still be partial).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};

use crate::checksum;

/// Largest offset any stage reads at; keeps every offset provably bounded
/// for the verifier.
pub const MAX_OFFSET: usize = 256;

/// A packet as one of the program types sees it.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;

    /// Length of the whole packet in bytes. For XDP all of it is directly
    /// readable; an skb may carry most of it in pages (GSO/GRO), beyond
    /// `data_end`, so its length is the skb's, not the linear part's.
    fn packet_len(&self) -> usize;

    /// The program context, for helpers that take it (`bpf_fib_lookup`).
    fn ctx_ptr(&self) -> *mut core::ffi::c_void;

    /// Updates a TCP/UDP checksum at `off` for an address in the
    /// pseudo-header changing from `old` to `new`.
    fn l4_addr_csum(&mut self, off: usize, old: u32, new: u32, udp: bool) -> Result<(), ()>;
}

/// Bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
pub fn ptr_at<F: Frame, T>(f: &F, off: usize) -> Result<*mut T, ()> {
    if off > MAX_OFFSET {
        return Err(());
    }
    let start = f.data();
    let end = f.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

/// Reads one byte through a two-byte window. LLVM turns a one-byte check
/// `p + 1 > end` into `p >= end`, from which the verifier learns no range;
/// every byte floatip reads this way is followed by more header anyway.
#[inline(always)]
pub fn read_u8<F: Frame>(f: &F, off: usize) -> Result<u8, ()> {
    Ok(unsafe { (*ptr_at::<F, [u8; 2]>(f, off)?)[0] })
}

/// Writes one byte through a two-byte window (see [`read_u8`]).
#[inline(always)]
pub fn write_u8<F: Frame>(f: &F, off: usize, v: u8) -> Result<(), ()> {
    unsafe { (*ptr_at::<F, [u8; 2]>(f, off)?)[0] = v };
    Ok(())
}

/// Reads two bytes as they lie in memory (network order bytes, native read).
#[inline(always)]
pub fn read_u16<F: Frame>(f: &F, off: usize) -> Result<u16, ()> {
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<F, u16>(f, off)?) })
}

#[inline(always)]
pub fn read_u32<F: Frame>(f: &F, off: usize) -> Result<u32, ()> {
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<F, u32>(f, off)?) })
}

#[inline(always)]
pub fn write_u16<F: Frame>(f: &F, off: usize, v: u16) -> Result<(), ()> {
    unsafe { core::ptr::write_unaligned(ptr_at::<F, u16>(f, off)?, v) };
    Ok(())
}

#[inline(always)]
pub fn write_u32<F: Frame>(f: &F, off: usize, v: u32) -> Result<(), ()> {
    unsafe { core::ptr::write_unaligned(ptr_at::<F, u32>(f, off)?, v) };
    Ok(())
}

/// XDP sees complete checksums only: fold them in place.
pub struct Xdp<'a>(pub &'a XdpContext);

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.0.ctx.cast()
    }

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    /// A volatile load on every use: otherwise LLVM proves later bounds
    /// checks redundant from earlier scalar arithmetic and drops them, and
    /// the verifier, which only trusts comparisons against the packet end,
    /// rejects the access.
    #[inline(always)]
    fn data_end(&self) -> usize {
        unsafe { core::ptr::read_volatile(&(*self.0.ctx).data_end) as usize }
    }

    #[inline(always)]
    fn l4_addr_csum(&mut self, off: usize, old: u32, new: u32, udp: bool) -> Result<(), ()> {
        let check = read_u16(self, off)?;
        if udp && check == 0 {
            // UDP without checksum stays without.
            return Ok(());
        }
        let mut next = checksum::replace4(check, old, new);
        if udp && next == 0 {
            next = 0xffff;
        }
        write_u16(self, off, next)
    }
}

/// TC sees skbs: let the kernel helper update the checksum so a partial
/// (offloaded) checksum's pseudo-header seed is fixed, and skb->csum too.
pub struct Tc<'a>(pub &'a TcContext);

impl Frame for Tc<'_> {
    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.0.skb.skb.cast()
    }

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    /// Volatile for the same reason as for XDP.
    #[inline(always)]
    fn data_end(&self) -> usize {
        unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).data_end) as usize }
    }

    #[inline(always)]
    fn l4_addr_csum(&mut self, off: usize, old: u32, new: u32, udp: bool) -> Result<(), ()> {
        let mut flags = (BPF_F_PSEUDO_HDR as u64) | 4;
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        // The frame starts at the Ethernet header, as skb offsets do at TC ingress.
        self.0
            .l4_csum_replace(off, old as u64, new as u64, flags)
            .map_err(|_| ())
    }
}
