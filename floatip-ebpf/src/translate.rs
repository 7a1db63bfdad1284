//! Translation: the 1:1 NAT decision for each side, and the rewrite of an
//! address together with every checksum and ICMP quote that carries it.

use floatip_common::{NatEntry, outcome};

use crate::{
    checksum,
    frame::{Frame, Window},
    maps, parse,
    parse::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4},
    stats,
};

#[derive(Clone, Copy)]
pub enum DropReason {
    Spoofed,
    Unassociated,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Spoofed => "spoofed source",
            DropReason::Unassociated => "unassociated pool address",
        }
    }
}

/// What the entry point should do with the frame.
pub enum Verdict {
    /// Hand to the kernel untouched (counted as `PASSED`).
    Pass,
    /// Hand to the kernel untouched because the TTL expires here, so the
    /// kernel's time-exceeded error quotes what the sender really sent.
    PassExpiring,
    /// Dropped, with why and the addresses, for the event log.
    Drop { why: DropReason, src: u32, dst: u32 },
    /// The frame was turned into a reply: send it back out.
    Reply,
    /// Translated: forward it (the IPv4 header is at `l3`).
    Forward { l3: usize, vlan: bool },
}

const SRC: usize = 12;
const DST: usize = 16;

/// ICMP types whose payload quotes the offending datagram.
#[inline(always)]
fn is_icmp_error(t: u8) -> bool {
    t == 3 || t == 11 || t == 12
}

/// Rewrites the address at `field` (SRC or DST) of the datagram from `old`
/// to `new`, with the IPv4 header checksum and, in a first fragment, the
/// TCP/UDP checksum whose pseudo-header holds the address.
#[inline(always)]
fn rewrite<F: Frame>(f: &mut F, ip: &Ipv4, field: usize, old: u32, new: u32) -> Result<(), ()> {
    let h = Window::<20>::at(f, ip.l3)?;
    h.set_u32(field, new);
    h.set_u16(10, checksum::replace4(h.u16(10), old, new));
    if !ip.first_fragment {
        return Ok(());
    }
    let end = ip.l3 + ip.tot_len;
    match ip.proto {
        IPPROTO_TCP if ip.l4 + 18 <= end => f.l4_addr_csum(ip.l4 + 16, old, new, false),
        IPPROTO_UDP if ip.l4 + 8 <= end => f.l4_addr_csum(ip.l4 + 6, old, new, true),
        _ => Ok(()),
    }
}

/// In an ICMP error, rewrites the quoted datagram's address at `field` from
/// `old` to `new` if it holds `old`, fixing the quoted IPv4 checksum, the
/// quoted TCP/UDP checksum when the quote holds it (a UDP checksum of 0
/// stays 0), and the outer ICMP checksum.
#[inline(always)]
fn rewrite_quote<F: Frame>(f: &F, ip: &Ipv4, field: usize, old: u32, new: u32) -> Result<(), ()> {
    if ip.proto != IPPROTO_ICMP || !ip.first_fragment {
        return Ok(());
    }
    let end = ip.l3 + ip.tot_len;
    let icmp = ip.l4;
    if icmp + 8 + 20 > end {
        return Ok(());
    }
    // The ICMP header and the quoted IPv4 header without options.
    let w = Window::<28>::at(f, icmp)?;
    if !is_icmp_error(w.u8(0)) {
        return Ok(());
    }
    const Q: usize = 8;
    let vihl = w.u8(Q);
    let qhlen = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || qhlen < 20 || icmp + Q + qhlen > end {
        return Ok(());
    }
    if w.u32(Q + field) != old {
        return Ok(());
    }
    let mut icsum = w.u16(2);
    w.set_u32(Q + field, new);
    icsum = checksum::replace4(icsum, old, new);
    let qc = w.u16(Q + 10);
    let qc2 = checksum::replace4(qc, old, new);
    w.set_u16(Q + 10, qc2);
    icsum = checksum::replace2(icsum, qc, qc2);

    let qfrag = u16::from_be(w.u16(Q + 6));
    if qfrag & 0x1fff == 0 {
        let ql4 = icmp + Q + qhlen;
        let at = match w.u8(Q + 9) {
            IPPROTO_UDP if ql4 + 8 <= end => Some((ql4 + 6, true)),
            IPPROTO_TCP if ql4 + 18 <= end => Some((ql4 + 16, false)),
            _ => None,
        };
        if let Some((off, udp)) = at {
            let l = Window::<2>::at(f, off)?;
            let lc = l.u16(0);
            if !(udp && lc == 0) {
                let mut lc2 = checksum::replace4(lc, old, new);
                if udp && lc2 == 0 {
                    lc2 = 0xffff;
                }
                l.set_u16(0, lc2);
                icsum = checksum::replace2(icsum, lc, lc2);
            }
        }
    }
    w.set_u16(2, icsum);
    Ok(())
}

/// Destination NAT: floating `fip` -> fixed `fixed`, with the quote of an
/// ICMP error (whose source was the floating IP) translated back too.
#[inline(always)]
fn dnat<F: Frame>(f: &mut F, ip: &Ipv4, fip: u32, to: NatEntry) -> Result<(), ()> {
    rewrite(f, ip, DST, fip, to.addr)?;
    rewrite_quote(f, ip, SRC, fip, to.addr)?;
    stats::count_assoc(to.slot, true, f.packet_len() as u64);
    Ok(())
}

/// Source NAT: fixed `fixed` -> floating `fip`, with the quote of an ICMP
/// error the instance sends (whose destination was the fixed IP).
#[inline(always)]
fn snat<F: Frame>(f: &mut F, ip: &Ipv4, fixed: u32, to: NatEntry) -> Result<(), ()> {
    rewrite(f, ip, SRC, fixed, to.addr)?;
    rewrite_quote(f, ip, DST, fixed, to.addr)?;
    stats::count_assoc(to.slot, false, f.packet_len() as u64);
    Ok(())
}

#[inline(always)]
fn drop(why: DropReason, ip: &Ipv4) -> Verdict {
    stats::count(match why {
        DropReason::Spoofed => outcome::DROPPED_SPOOFED,
        DropReason::Unassociated => outcome::DROPPED_UNASSOCIATED,
    });
    Verdict::Drop {
        why,
        src: ip.src,
        dst: ip.dst,
    }
}

/// External NIC: answer ARP for floating IPs, drop spoofed sources and
/// unassociated pool addresses, translate the destination of the rest.
#[inline(always)]
pub fn external<F: Frame>(f: &mut F, ifindex: u32) -> Result<Verdict, ()> {
    let l2 = parse::l2(f)?;
    if l2.proto == parse::ETH_P_ARP {
        return crate::arp::answer(f, l2.l3, ifindex);
    }
    if l2.proto != parse::ETH_P_IP {
        return Ok(Verdict::Pass);
    }
    let ip = parse::ipv4(f, l2.l3)?;
    if maps::maybe_fixed(ip.src) && maps::floating_of(ip.src).is_some() {
        return Ok(drop(DropReason::Spoofed, &ip));
    }
    match maps::fixed_of(ip.dst) {
        Some(fixed) => {
            if ip.ttl <= 1 {
                return Ok(Verdict::PassExpiring);
            }
            dnat(f, &ip, ip.dst, fixed)?;
            stats::count(outcome::TRANSLATED);
            Ok(Verdict::Forward {
                l3: l2.l3,
                vlan: l2.vlan,
            })
        }
        None if maps::in_pool(ip.dst) => Ok(drop(DropReason::Unassociated, &ip)),
        None => Ok(Verdict::Pass),
    }
}

/// Internal NIC: translate the source of associated instances and, for
/// hairpin traffic, the destination floating IP in the same pass.
#[inline(always)]
pub fn internal<F: Frame>(f: &mut F) -> Result<Verdict, ()> {
    let l2 = parse::l2(f)?;
    if l2.proto != parse::ETH_P_IP {
        return Ok(Verdict::Pass);
    }
    let ip = parse::ipv4(f, l2.l3)?;
    let src_fip = maps::floating_of(ip.src);
    let dst_fixed = maps::fixed_of(ip.dst);
    if src_fip.is_none() {
        // No instance may send from a floating IP address.
        if maps::in_pool(ip.src) {
            return Ok(drop(DropReason::Spoofed, &ip));
        }
        if dst_fixed.is_none() {
            return Ok(Verdict::Pass);
        }
    }
    if ip.ttl <= 1 {
        return Ok(Verdict::PassExpiring);
    }
    if let Some(fip) = src_fip {
        snat(f, &ip, ip.src, fip)?;
    }
    if let Some(fixed) = dst_fixed {
        dnat(f, &ip, ip.dst, fixed)?;
    }
    stats::count(outcome::TRANSLATED);
    Ok(Verdict::Forward {
        l3: l2.l3,
        vlan: l2.vlan,
    })
}
