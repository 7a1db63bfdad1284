//! Parsing: Ethernet (with at most one 802.1Q/802.1ad tag, in the frame or,
//! at TC ingress, in the skb's metadata) and IPv4, validated before
//! anything is rewritten, so a frame floatip does not understand is passed
//! on bit-identical.

use crate::{
    checksum,
    frame::{Frame, Window},
};

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_UDPLITE: u8 = 136;

/// The broadcast MAC as [`Window::mac`] reads it.
pub const BROADCAST: u64 = 0xffff_ffff_ffff;

/// Layer 2: where the payload starts and what it is.
pub struct L2 {
    /// Destination MAC, as [`Window::mac`] reads it.
    pub dst: u64,
    /// Offset of the L3 header.
    pub l3: usize,
    /// EtherType of the payload, as it lies in memory.
    pub proto: u16,
    /// The frame carries one VLAN tag (in the frame or in the metadata).
    pub vlan: bool,
}

#[inline(always)]
fn is_tag(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
pub fn l2<F: Frame>(f: &F) -> Result<L2, ()> {
    let eth = Window::<14>::at(f, 0)?;
    let dst = eth.mac(0);
    let proto = eth.u16(12);
    let outer_in_metadata = f.outer_tag_in_metadata();
    if is_tag(proto) {
        let inner = Window::<2>::at(f, 16)?.u16(0);
        // Stacked tags are not ours to handle: leave them to the kernel.
        if outer_in_metadata || is_tag(inner) {
            return Err(());
        }
        return Ok(L2 {
            dst,
            l3: 18,
            proto: inner,
            vlan: true,
        });
    }
    Ok(L2 {
        dst,
        l3: 14,
        proto,
        vlan: outer_in_metadata,
    })
}

/// A validated IPv4 header.
pub struct Ipv4 {
    pub l3: usize,
    /// Offset of the L4 header (after options).
    pub l4: usize,
    /// Bytes from `l3` to the end of the datagram (total length).
    pub tot_len: usize,
    pub proto: u8,
    pub ttl: u8,
    /// Fragment offset in bytes: where this packet's payload starts in the
    /// datagram's (transport) payload; 0 for an unfragmented datagram.
    pub frag: usize,
    /// DF: the datagram may not be fragmented.
    pub dont_fragment: bool,
    pub src: u32,
    pub dst: u32,
}

impl Ipv4 {
    /// The L4 header is in this packet (fragment offset zero).
    #[inline(always)]
    pub fn first_fragment(&self) -> bool {
        self.frag == 0
    }

    /// The header carries options (IHL > 5).
    #[inline(always)]
    pub fn has_options(&self) -> bool {
        self.l4 - self.l3 > 20
    }

    /// Bytes of payload after the header.
    #[inline(always)]
    pub fn payload_len(&self) -> usize {
        self.l3 + self.tot_len - self.l4
    }
}

/// Validates the IPv4 header at `l3`: version 4, IHL >= 5, header and total
/// length inside the frame. The header checksum is left to
/// [`verify_header_checksum`], which only datagrams floatip acts on pay for.
#[inline(always)]
pub fn ipv4<F: Frame>(f: &F, l3: usize) -> Result<Ipv4, ()> {
    let h = Window::<20>::at(f, l3)?;
    let vihl = h.u8(0);
    if vihl >> 4 != 4 {
        return Err(());
    }
    let hlen = ((vihl & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(());
    }
    let tot_len = u16::from_be(h.u16(2)) as usize;
    if tot_len < hlen || l3 + tot_len > f.packet_len() {
        return Err(());
    }
    if hlen > 20 {
        // Make sure the options, too, are in the frame.
        Window::<2>::at(f, l3 + hlen - 2)?;
    }
    let frags = u16::from_be(h.u16(6));
    Ok(Ipv4 {
        l3,
        l4: l3 + hlen,
        tot_len,
        proto: h.u8(9),
        ttl: h.u8(8),
        frag: ((frags & 0x1fff) as usize) * 8,
        dont_fragment: frags & 0x4000 != 0,
        src: h.u32(12),
        dst: h.u32(16),
    })
}

/// A header with a wrong checksum is an error: a router must discard it
/// (RFC 1812 §5.2.2), so it is left untouched to the kernel, which does
/// (and counts it). The sum runs over IHL words, 4 bytes at a time.
#[inline(always)]
pub fn verify_header_checksum<F: Frame>(f: &F, ip: &Ipv4) -> Result<(), ()> {
    let h = Window::<20>::at(f, ip.l3)?;
    let mut sum = h.u32(0) as u64 + h.u32(4) as u64 + h.u32(8) as u64;
    sum += h.u32(12) as u64 + h.u32(16) as u64;
    let hlen = ip.l4 - ip.l3;
    let mut at = 20;
    // Options: at most 40 bytes.
    while at < 60 {
        if at >= hlen {
            break;
        }
        sum += Window::<4>::at(f, ip.l3 + at)?.u32(0) as u64;
        at += 4;
    }
    if checksum::sum_verifies(sum) {
        Ok(())
    } else {
        Err(())
    }
}
