//! Parsing: Ethernet (with at most one 802.1Q tag) and IPv4, validated
//! before anything is rewritten, so a frame floatip does not understand is
//! passed on bit-identical.

use crate::frame::{Frame, Window};

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Layer 2: where the payload starts and what it is.
pub struct L2 {
    /// Offset of the L3 header.
    pub l3: usize,
    /// EtherType of the payload, as it lies in memory.
    pub proto: u16,
    pub vlan: bool,
}

#[inline(always)]
pub fn l2<F: Frame>(f: &F) -> Result<L2, ()> {
    let eth = Window::<14>::at(f, 0)?;
    let proto = eth.u16(12);
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let inner = Window::<2>::at(f, 16)?.u16(0);
        // Stacked tags are not ours to handle: leave them to the kernel.
        if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
            return Err(());
        }
        return Ok(L2 {
            l3: 18,
            proto: inner,
            vlan: true,
        });
    }
    Ok(L2 {
        l3: 14,
        proto,
        vlan: false,
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
    /// Fragment offset is zero: the L4 header is in this packet.
    pub first_fragment: bool,
    pub src: u32,
    pub dst: u32,
}

/// Validates the IPv4 header at `l3`: version 4, IHL >= 5, header and total
/// length inside the frame.
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
        first_fragment: frags & 0x1fff == 0,
        src: h.u32(12),
        dst: h.u32(16),
    })
}
