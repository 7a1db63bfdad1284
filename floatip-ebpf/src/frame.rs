//! The one place of the data plane that touches packet memory:
//! bounds-checked access, and what differs between XDP (plain bytes) and TC
//! (skbs whose checksum may still be partial, whose outer VLAN tag is in
//! their metadata).

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED,
    },
    helpers::generated::{
        bpf_check_mtu, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};

use crate::checksum::Zero;

/// Largest offset any stage reads at; keeps every offset provably bounded
/// for the verifier. The deepest read is the end of an ICMP error's quote
/// (`icmp`): a tagged Ethernet header, a 60-byte IPv4 header and 548 bytes.
pub const MAX_OFFSET: usize = 640;

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

    /// Updates the transport checksum at `off` (treating zero as `zero`
    /// says) for an address in the pseudo-header changing from `old` to `new`.
    fn l4_addr_csum(&mut self, off: usize, old: u32, new: u32, zero: Zero) -> Result<(), ()>;

    /// Whether the frame's outer VLAN tag is not in the frame but in the
    /// packet's metadata, where the kernel puts it before TC ingress.
    fn outer_tag_in_metadata(&self) -> bool;

    /// Segments GRO merged into one packet: its total length is not what
    /// the egress sees, so a FIB "larger than the MTU" says nothing about
    /// it (the kernel segments it and checks the segments). Asked only
    /// after such an answer.
    fn gro_merged(&self) -> bool;

    /// Cuts the packet to its first `len` bytes.
    fn truncate(&mut self, len: usize) -> Result<(), ()>;

    /// Inserts `n` bytes after the (untagged) Ethernet header, which stays
    /// the first 14 bytes. Every window taken before is invalid afterwards.
    fn insert_after_mac(&mut self, n: usize) -> Result<(), ()>;
    /// Makes the first `len` bytes directly readable (an skb may hold them
    /// in pages). Every window taken before is invalid afterwards.
    fn make_readable(&mut self, len: usize) -> Result<(), ()>;
}

/// The one's-complement sum (unfolded, of native-order loads) of the `len`
/// bytes at `off`, an even offset into what is summed (an odd last byte
/// counts as its high-order byte, RFC 1071). Bounded: at most
/// [`MAX_SUMMED`] bytes.
#[inline(always)]
pub fn sum<F: Frame>(f: &F, off: usize, len: usize) -> Result<u64, ()> {
    if len > MAX_SUMMED || len < 2 {
        return Err(());
    }
    let mut sum = 0u64;
    let mut i = 0;
    while i + 4 <= len && i < MAX_SUMMED {
        sum += Window::<4>::at(f, off + i)?.u32(0) as u64;
        i += 4;
    }
    if i + 2 <= len {
        sum += Window::<2>::at(f, off + i)?.u16(0) as u64;
        i += 2;
    }
    if i < len {
        // The last byte, read with the one before it (a 1-byte window's
        // check is one the verifier cannot use): in memory order it is the
        // high byte of that pair, the low byte of the word it starts.
        sum += (Window::<2>::at(f, off + i - 1)?.u16(0) >> 8) as u64;
    }
    Ok(sum)
}

/// Most bytes [`sum`] adds up.
pub const MAX_SUMMED: usize = 560;

/// Bounds-checked pointer to a `T` at `off` bytes into the frame: the one
/// bounds check every [`Window`] goes through.
#[inline(always)]
fn ptr_at<F: Frame, T>(f: &F, off: usize) -> Result<*mut T, ()> {
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

/// A bounds-checked window of `N` header bytes at some offset of the frame.
/// One check covers every field read or written through it, so a header
/// costs one comparison against the packet end instead of one per field.
/// A window does not outlive a helper call that may move packet data (the
/// verifier forgets packet pointers then): take a new one afterwards.
#[derive(Clone, Copy)]
pub struct Window<const N: usize>(*mut u8);

impl<const N: usize> Window<N> {
    #[inline(always)]
    pub fn at<F: Frame>(f: &F, off: usize) -> Result<Self, ()> {
        Ok(Self(ptr_at::<F, [u8; N]>(f, off)?.cast()))
    }

    // Fields are read as they lie in memory (network byte order bytes,
    // native-endian integer). Offsets are constants below N at every call
    // site; the debug assertion documents it. Misaligned loads are one
    // instruction (see floatip-ebpf/build.rs).

    #[inline(always)]
    pub fn u8(&self, at: usize) -> u8 {
        debug_assert!(at < N);
        unsafe { *self.0.add(at) }
    }

    #[inline(always)]
    pub fn u16(&self, at: usize) -> u16 {
        debug_assert!(at + 2 <= N);
        unsafe { core::ptr::read_unaligned(self.0.add(at).cast()) }
    }

    #[inline(always)]
    pub fn u32(&self, at: usize) -> u32 {
        debug_assert!(at + 4 <= N);
        unsafe { core::ptr::read_unaligned(self.0.add(at).cast()) }
    }

    /// A MAC address as the low 48 bits of a u64, memory order (see [`mac_bits`]).
    #[inline(always)]
    pub fn mac(&self, at: usize) -> u64 {
        debug_assert!(at + 6 <= N);
        self.u32(at) as u64 | (self.u16(at + 4) as u64) << 32
    }

    #[inline(always)]
    pub fn set_u8(&self, at: usize, v: u8) {
        debug_assert!(at < N);
        unsafe { *self.0.add(at) = v }
    }

    #[inline(always)]
    pub fn set_u16(&self, at: usize, v: u16) {
        debug_assert!(at + 2 <= N);
        unsafe { core::ptr::write_unaligned(self.0.add(at).cast(), v) }
    }

    #[inline(always)]
    pub fn set_u32(&self, at: usize, v: u32) {
        debug_assert!(at + 4 <= N);
        unsafe { core::ptr::write_unaligned(self.0.add(at).cast(), v) }
    }

    /// Writes a MAC address held as [`Window::mac`] returns it, as a 4-byte
    /// and a 2-byte store (a 6-byte array copy would become a `memmove` call).
    #[inline(always)]
    pub fn set_mac(&self, at: usize, mac: u64) {
        debug_assert!(at + 6 <= N);
        self.set_u32(at, mac as u32);
        self.set_u16(at + 4, (mac >> 32) as u16);
    }
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
    fn l4_addr_csum(&mut self, off: usize, old: u32, new: u32, zero: Zero) -> Result<(), ()> {
        let w = Window::<2>::at(self, off)?;
        if let Some(next) = zero.replace4(w.u16(0), old, new) {
            w.set_u16(0, next);
        }
        Ok(())
    }

    /// XDP sees the frame as it arrived, tags included (a NIC that strips
    /// tags into descriptors hides them from XDP; floatip does not read
    /// those descriptors).
    #[inline(always)]
    fn outer_tag_in_metadata(&self) -> bool {
        false
    }

    /// Native XDP sees wire frames; generic XDP runs after GRO and sees a
    /// merged skb linearized, longer than the ingress device's MTU allows
    /// for one frame, which `bpf_check_mtu` (device 0: the ingress) tells.
    #[inline(always)]
    fn gro_merged(&self) -> bool {
        let mut mtu: u32 = 0;
        let rc = unsafe { bpf_check_mtu(self.ctx_ptr(), 0, &mut mtu, 0, 0) };
        rc == BPF_MTU_CHK_RET_FRAG_NEEDED as i64
    }

    #[inline(always)]
    fn truncate(&mut self, len: usize) -> Result<(), ()> {
        let delta = len as i32 - self.packet_len() as i32;
        match unsafe { bpf_xdp_adjust_tail(self.0.ctx, delta) } {
            0 => Ok(()),
            _ => Err(()),
        }
    }

    /// Grows the frame at the front, then moves the Ethernet header there.
    #[inline(always)]
    fn insert_after_mac(&mut self, n: usize) -> Result<(), ()> {
        if unsafe { bpf_xdp_adjust_head(self.0.ctx, -(n as i32)) } != 0 {
            return Err(());
        }
        let old = Window::<14>::at(self, n)?;
        let (dst, src, ethertype) = (old.mac(0), old.mac(6), old.u16(12));
        let new = Window::<14>::at(self, 0)?;
        new.set_mac(0, dst);
        new.set_mac(6, src);
        new.set_u16(12, ethertype);
        Ok(())
    }
    /// All of an XDP frame is readable (floatip does not load multi-buffer
    /// programs: a frame is one buffer).
    #[inline(always)]
    fn make_readable(&mut self, _len: usize) -> Result<(), ()> {
        Ok(())
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
    fn l4_addr_csum(&mut self, off: usize, old: u32, new: u32, zero: Zero) -> Result<(), ()> {
        // The frame starts at the Ethernet header, as skb offsets do at TC ingress.
        self.0
            .l4_csum_replace(off, old as u64, new as u64, zero.l4_csum_replace_flags())
            .map_err(|_| ())
    }

    /// The kernel moves the outer tag of a received frame into the skb
    /// (`skb_vlan_untag`) before the TC ingress hook runs.
    #[inline(always)]
    fn outer_tag_in_metadata(&self) -> bool {
        unsafe { (*self.0.skb.skb).vlan_present != 0 }
    }

    #[inline(always)]
    fn gro_merged(&self) -> bool {
        unsafe { (*self.0.skb.skb).gso_size != 0 }
    }

    #[inline(always)]
    fn truncate(&mut self, len: usize) -> Result<(), ()> {
        match unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) } {
            0 => Ok(()),
            _ => Err(()),
        }
    }

    /// `BPF_ADJ_ROOM_MAC` inserts right after the MAC header; the new
    /// headers are then made directly writable.
    #[inline(always)]
    fn insert_after_mac(&mut self, n: usize) -> Result<(), ()> {
        self.0
            .adjust_room(n as i32, BPF_ADJ_ROOM_MAC, 0)
            .map_err(|_| ())?;
        self.0.pull_data(14 + n as u32 + 20).map_err(|_| ())
    }
    #[inline(always)]
    fn make_readable(&mut self, len: usize) -> Result<(), ()> {
        self.0.pull_data(len as u32).map_err(|_| ())
    }
}

/// A MAC address held in (2-byte aligned) memory outside the packet, as the
/// low 48 bits of a u64 in memory order (bpfel: byte 0 is the lowest byte).
/// Three volatile 16-bit loads: LLVM would otherwise merge them into a
/// misaligned 4-byte load, which the verifier rejects for the stack even
/// where misaligned packet access is fine (see build.rs), and a u64 keeps the
/// value from being spilled to the stack in misaligned pieces.
#[inline(always)]
pub fn mac_bits(mac: &[u8; 6]) -> u64 {
    let w = mac.as_ptr().cast::<u16>();
    let (a, b, c) = unsafe {
        (
            core::ptr::read_volatile(w),
            core::ptr::read_volatile(w.add(1)),
            core::ptr::read_volatile(w.add(2)),
        )
    };
    a as u64 | (b as u64) << 16 | (c as u64) << 32
}
