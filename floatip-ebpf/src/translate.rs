//! Translation: the 1:1 NAT decision for each side, and the rewrite of an
//! address together with every checksum and ICMP quote that carries it.

use floatip_common::{NatEntry, NextHop, Routing, outcome};

use crate::{
    arp, checksum,
    forward::{self, Miss, Route},
    frame::{Frame, Window},
    icmp, maps, parse,
    parse::{IPPROTO_ICMP, Ipv4, L2},
    stats,
    verdict::{DropReason, Verdict},
};

const SRC: usize = 12;
const DST: usize = 16;

/// ICMP types whose payload quotes the offending datagram.
#[inline(always)]
pub fn is_icmp_error(t: u8) -> bool {
    t == 3 || t == 11 || t == 12
}

/// Martian source addresses (RFC 1812 §5.3.7): "this network" 0/8,
/// loopback 127/8, multicast 224/4 and reserved 240/4 with the limited
/// broadcast. The first octet decides; it is the first byte in memory.
#[inline(always)]
fn martian(src: u32) -> bool {
    let a = src.to_ne_bytes()[0];
    a == 0 || a == 127 || a >= 224
}

/// Rewrites the address at `field` (SRC or DST) of the datagram from `old`
/// to `new`, with the IPv4 header checksum and the transport checksum
/// whose pseudo-header holds the address, in whichever fragment holds it.
#[inline(always)]
fn rewrite_address<F: Frame>(
    f: &mut F,
    ip: &Ipv4,
    field: usize,
    old: u32,
    new: u32,
) -> Result<(), ()> {
    let h = Window::<20>::at(f, ip.l3)?;
    h.set_u32(field, new);
    h.set_u16(10, checksum::replace4(h.u16(10), old, new));
    match checksum::pseudo_field(ip.proto, ip.frag, ip.payload_len()) {
        Some((at, zero)) => f.l4_addr_csum(ip.l4 + at, old, new, zero),
        None => Ok(()),
    }
}

/// In an ICMP error, rewrites the quoted datagram's address at `field` from
/// `old` to `new` if it holds `old`, fixing the quoted IPv4 checksum, the
/// quoted transport checksum when the quote holds it, and the outer ICMP
/// checksum.
#[inline(always)]
fn rewrite_quote<F: Frame>(f: &F, ip: &Ipv4, field: usize, old: u32, new: u32) -> Result<(), ()> {
    if ip.proto != IPPROTO_ICMP || !ip.first_fragment() {
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

    let ql4 = icmp + Q + qhlen;
    let qfrag = ((u16::from_be(w.u16(Q + 6)) & 0x1fff) as usize) * 8;
    if let Some((at, zero)) = checksum::pseudo_field(w.u8(Q + 9), qfrag, end - ql4) {
        let l = Window::<2>::at(f, ql4 + at)?;
        let lc = l.u16(0);
        if let Some(lc2) = zero.replace4(lc, old, new) {
            l.set_u16(0, lc2);
            icsum = checksum::replace2(icsum, lc, lc2);
        }
    }
    w.set_u16(2, icsum);
    Ok(())
}

/// Destination NAT: floating `fip` -> fixed `fixed`, with the quote of an
/// ICMP error (whose source was the floating IP) translated back too.
#[inline(always)]
fn dnat<F: Frame>(f: &mut F, ip: &Ipv4, fip: u32, to: &NatEntry) -> Result<(), ()> {
    rewrite_address(f, ip, DST, fip, to.addr)?;
    rewrite_quote(f, ip, SRC, fip, to.addr)?;
    stats::count_assoc(to.slot, true, f.packet_len() as u64);
    Ok(())
}

/// Source NAT: fixed `fixed` -> floating `fip`, with the quote of an ICMP
/// error the instance sends (whose destination was the fixed IP).
#[inline(always)]
fn snat<F: Frame>(f: &mut F, ip: &Ipv4, fixed: u32, to: &NatEntry) -> Result<(), ()> {
    rewrite_address(f, ip, SRC, fixed, to.addr)?;
    rewrite_quote(f, ip, DST, fixed, to.addr)?;
    stats::count_assoc(to.slot, false, f.packet_len() as u64);
    Ok(())
}

#[inline(always)]
fn drop(why: DropReason, ip: &Ipv4) -> Verdict {
    stats::count(match why {
        DropReason::Unassociated => outcome::DROPPED_UNASSOCIATED,
        DropReason::Spoofed | DropReason::Martian => outcome::DROPPED_SPOOFED,
    });
    Verdict::Drop {
        why,
        src: ip.src,
        dst: ip.dst,
    }
}

/// Whether a router would route this datagram at all: the frame is
/// addressed to the NIC's own MAC (a router takes nothing else, and does not
/// forward link-layer broadcast or multicast: RFC 1812 §5.3.4; whatever a
/// bridge floods to it is the kernel's to drop or deliver locally), and the
/// header checksum holds (`Err`: malformed, left to the kernel to discard).
/// Checked only for datagrams floatip would rewrite: one IFACES lookup and
/// one header sum for them, nothing for the rest.
#[inline(always)]
fn routable<F: Frame>(f: &F, l2: &L2, ip: &Ipv4, ifindex: u32) -> Result<bool, ()> {
    if maps::managed_mac(ifindex) != Some(l2.dst) {
        return Ok(false);
    }
    parse::verify_header_checksum(f, ip)?;
    Ok(true)
}

/// Where the packet goes once translated to `src` -> `dst`. A tagged frame
/// belongs to a VLAN device the kernel owns and is never redirected, but
/// the lookup still tells whether it is for the gateway itself.
#[inline(always)]
fn route<F: Frame>(f: &F, l2: &L2, ifindex: u32, src: u32, dst: u32) -> Result<Route, Miss> {
    let route = forward::route(f, ifindex, l2.l3, src, dst);
    if l2.vlan && route.is_ok() {
        return Err(Miss::TAGGED);
    }
    route
}

/// Where the packet goes once translated: the follower's cached `hop` when
/// it is current and the frame untagged (one map entry, no FIB call), else
/// the FIB's answer.
///
/// A datagram with IP options is translated but never redirected: the
/// kernel forwards it, and so does a router's option processing as Linux
/// does it (Record Route and Timestamp entries with the egress address,
/// the source-route policy, RFC 1812 §5.2.4). Options are rare (RFC 7126:
/// many networks drop them), so the fast path pays one comparison. The FIB
/// is still asked, so a datagram for the gateway itself or one it answers
/// with an error is known before the rewrite.
#[inline(always)]
fn route_via<F: Frame>(
    f: &F,
    l2: &L2,
    ip: &Ipv4,
    ifindex: u32,
    (src, dst): (u32, u32),
    hop: Option<(&NextHop, Routing)>,
) -> Result<Route, Miss> {
    if ip.has_options() {
        return route(f, l2, ifindex, src, dst).and(Err(Miss::OPTIONS));
    }
    if !l2.vlan
        && let Some((hop, routing)) = hop
        && let Some(cached) = forward::cached(hop, routing.epoch, ip.tot_len)
    {
        return Ok(cached);
    }
    route(f, l2, ifindex, src, dst)
}

/// Whether a FIB "larger than the MTU" is a real verdict: DF is set and the
/// packet is one datagram, not segments GRO merged (the kernel segments
/// those). Asks the frame only after such an answer.
#[inline(always)]
fn may_not_fragment<F: Frame>(f: &F, ip: &Ipv4, miss: &Miss) -> bool {
    miss.frag_needed() && ip.dont_fragment && !f.gro_merged()
}

/// A datagram for a fixed IP (untranslated yet) that cannot be forwarded
/// and deserves an ICMP error: turned into it (see `icmp`).
#[inline(always)]
fn unforwardable<F: Frame>(
    f: &mut F,
    l2: &L2,
    ip: &Ipv4,
    route: &Result<Route, Miss>,
) -> Result<Option<Verdict>, ()> {
    if let Err(miss) = route
        && let Some((code, mtu)) = miss.unreachable_code(may_not_fragment(f, ip, miss))
        && icmp::allowed(f, l2, ip)?
    {
        return icmp::unreachable(f, l2, ip, code, mtu).map(Some);
    }
    Ok(None)
}

/// External NIC: answer ARP for floating IPs, drop spoofed sources and
/// unassociated pool addresses, translate the destination of the rest.
#[inline(always)]
pub fn external<F: Frame>(f: &mut F, ifindex: u32) -> Result<Verdict, ()> {
    let l2 = parse::l2(f)?;
    if l2.proto == parse::ETH_P_ARP {
        return arp::answer(f, &l2, ifindex);
    }
    if l2.proto != parse::ETH_P_IP {
        return Ok(Verdict::Pass);
    }
    let ip = parse::ipv4(f, l2.l3)?;
    let managed_src = maps::maybe_managed(ip.src);
    if managed_src && maps::floating_of(ip.src).is_some() {
        return Ok(drop(DropReason::Spoofed, &ip));
    }
    match maps::fixed_of(ip.dst) {
        Some(fixed) => {
            if !routable(f, &l2, &ip, ifindex)? {
                return Ok(Verdict::Pass);
            }
            if martian(ip.src) {
                return Ok(drop(DropReason::Martian, &ip));
            }
            // An outsider claiming one of this gateway's floating IPs, any
            // pool address or an address of the gateway itself: only the
            // gateway sends from those (the instance's answer would go to
            // the gateway, or to another tenant).
            if managed_src
                && (maps::fixed_of(ip.src).is_some()
                    || maps::in_pool(ip.src)
                    || maps::is_gateway_address(ip.src))
            {
                return Ok(drop(DropReason::Spoofed, &ip));
            }
            if ip.ttl <= 1 {
                return Ok(Verdict::ToKernel {
                    why: Miss::TTL_EXPIRES,
                });
            }
            let hop = maps::routing().map(|r| (&fixed.hop, r));
            let route = route_via(f, &l2, &ip, ifindex, (ip.src, fixed.addr), hop);
            if let Some(error) = unforwardable(f, &l2, &ip, &route)? {
                return Ok(error);
            }
            dnat(f, &ip, ip.dst, fixed)?;
            stats::count(outcome::TRANSLATED);
            Ok(Verdict::Forward { l3: l2.l3, route })
        }
        None if maps::in_pool(ip.dst) => Ok(drop(DropReason::Unassociated, &ip)),
        None => Ok(Verdict::Pass),
    }
}

/// Internal NIC: translate the source of associated instances and, for
/// hairpin traffic, the destination floating IP in the same pass.
#[inline(always)]
pub fn internal<F: Frame>(f: &mut F, ifindex: u32) -> Result<Verdict, ()> {
    let l2 = parse::l2(f)?;
    if l2.proto != parse::ETH_P_IP {
        return Ok(Verdict::Pass);
    }
    let ip = parse::ipv4(f, l2.l3)?;
    let src_fip = maps::floating_of(ip.src);
    // Most destinations are on the Internet: their /16 holds no floating IP.
    let dst_fixed = maps::maybe_managed(ip.dst)
        .then(|| maps::fixed_of(ip.dst))
        .flatten();
    if src_fip.is_none() {
        // No instance may send from a floating IP address.
        if maps::maybe_managed(ip.src) && maps::in_pool(ip.src) {
            return Ok(drop(DropReason::Spoofed, &ip));
        }
        if dst_fixed.is_none() {
            return Ok(Verdict::Pass);
        }
    }
    if !routable(f, &l2, &ip, ifindex)? {
        return Ok(Verdict::Pass);
    }
    if dst_fixed.is_some() && martian(ip.src) {
        return Ok(drop(DropReason::Martian, &ip));
    }
    if ip.ttl <= 1 {
        return Ok(Verdict::ToKernel {
            why: Miss::TTL_EXPIRES,
        });
    }
    let src = src_fip.map_or(ip.src, |e| e.addr);
    let dst = dst_fixed.map_or(ip.dst, |e| e.addr);
    // A translated destination leaves by its fixed IP's next hop; a
    // translated source alone by the default route's, unless another route
    // may cover the destination.
    let hop = maps::routing().and_then(|r| match dst_fixed {
        Some(e) => Some((&e.hop, r)),
        None => maps::default_hop(&r, ip.dst).map(|h| (h, r)),
    });
    let route = route_via(f, &l2, &ip, ifindex, (src, dst), hop);
    // When only the source would change, the FIB's miss may say the
    // packet never leaves through an external NIC. Traffic for the gateway
    // itself (its own addresses, a subnet broadcast) keeps its fixed
    // source, so the gateway's reply finds the instance. A packet the
    // kernel answers with an ICMP error (unreachable or prohibited route,
    // too big with DF set) goes to it as sent, so the error quotes the
    // fixed address the instance's socket knows (PMTU discovery works).
    // No second lookup: the one above is the forwarding one.
    if dst_fixed.is_none()
        && let Err(miss) = &route
    {
        if miss.not_forwarded() {
            return Ok(Verdict::Pass);
        }
        if miss.answered_with_error(may_not_fragment(f, &ip, miss)) {
            return Ok(Verdict::ToKernel { why: *miss });
        }
    }
    if dst_fixed.is_some()
        && let Some(error) = unforwardable(f, &l2, &ip, &route)?
    {
        return Ok(error);
    }
    if let Some(fip) = src_fip {
        snat(f, &ip, ip.src, fip)?;
    }
    if let Some(fixed) = dst_fixed {
        dnat(f, &ip, ip.dst, fixed)?;
    }
    stats::count(outcome::TRANSLATED);
    Ok(Verdict::Forward { l3: l2.l3, route })
}

/// Egress of an external NIC: an ICMP error leaving the gateway whose
/// quoted destination is an associated fixed IP is one the gateway's own
/// kernel sent about a packet floatip translated inbound and handed over
/// (its next hop had no neighbour entry, which only the kernel can wait
/// for; it sends host unreachable once the instance does not answer ARP).
/// The quote gets the floating IP back, as the sender sent it, so its
/// socket matches the error (EHOSTUNREACH) and the fixed IP does not leak.
/// The error's own source stays the gateway's address. Errors floatip
/// forwards from instances were translated on the way in, so their quotes
/// hold floating IPs already. Returns whether it rewrote one.
#[inline(always)]
pub fn kernel_error<F: Frame>(f: &mut F) -> Result<bool, ()> {
    let l2 = parse::l2(f)?;
    if l2.proto != parse::ETH_P_IP {
        return Ok(false);
    }
    let ip = parse::ipv4(f, l2.l3)?;
    if ip.proto != IPPROTO_ICMP || !ip.first_fragment() || ip.l4 + 28 > ip.l3 + ip.tot_len {
        return Ok(false);
    }
    let w = Window::<28>::at(f, ip.l4)?;
    if !is_icmp_error(w.u8(0)) {
        return Ok(false);
    }
    let fixed = w.u32(8 + DST);
    if !maps::maybe_managed(fixed) {
        return Ok(false);
    }
    let Some(fip) = maps::floating_of(fixed) else {
        return Ok(false);
    };
    rewrite_quote(f, &ip, DST, fixed, fip.addr)?;
    Ok(true)
}
