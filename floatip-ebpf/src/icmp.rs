//! ICMP errors the gateway sends itself, as a router does (RFC 1812
//! §4.3.2), about a datagram it would translate towards a fixed IP but
//! cannot forward: too big for the egress MTU with DF set (fragmentation
//! needed, with the MTU), or an unreachable or prohibited route. The error
//! quotes the datagram as its sender sent it (before any translation), so
//! the sender's socket matches it: PMTU discovery and EHOSTUNREACH work
//! towards an instance. The kernel cannot do this for floatip: it would see
//! either the translated datagram (and quote the fixed IP) or one addressed
//! to a floating IP, which it does not route to the instance.
//!
//! The frame is turned into the error in place: cut after the quote (as
//! much of the datagram as keeps the error within 576 bytes, RFC 1812
//! §4.3.2.3, as Linux quotes; at least the header and 8 bytes, RFC 792),
//! 28 bytes inserted after the
//! Ethernet header for the new IPv4 and ICMP headers, MACs swapped, and
//! sent back out of the NIC it came in on. Sourced from the floating IP the
//! sender addressed (hosts match an error by its quote, not its source).
//! Not rate-limited here: the error is at most 28 bytes longer than what
//! triggered it and goes only to the trigger's source, so it amplifies
//! little (RFC 1812 §4.3.2.8's limit is a SHOULD still to add).

use floatip_common::outcome;

use crate::{
    checksum,
    frame::{self, Frame, Window},
    parse::{IPPROTO_ICMP, Ipv4, L2},
    stats,
    translate::is_icmp_error,
    verdict::Verdict,
};

/// ICMP destination unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
/// Bytes of the offending datagram's payload an error quotes at least (RFC 792).
const QUOTED_PAYLOAD: usize = 8;
/// The new IPv4 header and the ICMP header.
const NEW_HEADERS: usize = 28;
/// Most bytes of the datagram an error quotes: the error stays within the
/// 576 bytes every host accepts (RFC 1812 §4.3.2.3).
const MAX_QUOTE: usize = 576 - NEW_HEADERS;
const _: () = assert!(MAX_QUOTE - 20 <= crate::frame::MAX_SUMMED);

/// Whether RFC 1122 §3.2.2 allows an error about this datagram: not about
/// a non-initial fragment or another ICMP error, and only with enough of it
/// to quote. (Link-layer broadcast and martian sources never get here.)
#[inline(always)]
pub fn allowed<F: Frame>(f: &F, l2: &L2, ip: &Ipv4) -> Result<bool, ()> {
    if l2.vlan || !ip.first_fragment() || ip.payload_len() < QUOTED_PAYLOAD {
        return Ok(false);
    }
    // The 8 bytes the error would quote (a 1-byte window's bounds check
    // is one LLVM rewrites into a form the verifier cannot use).
    let quoted = Window::<QUOTED_PAYLOAD>::at(f, ip.l4)?;
    if ip.proto == IPPROTO_ICMP && is_icmp_error(quoted.u8(0)) {
        return Ok(false);
    }
    Ok(true)
}

/// Turns the (untranslated, untagged) datagram into a destination
/// unreachable error of `code` (4: fragmentation needed, with `mtu`) back
/// to its sender.
#[inline(always)]
pub fn unreachable<F: Frame>(
    f: &mut F,
    l2: &L2,
    ip: &Ipv4,
    code: u8,
    mtu: u16,
) -> Result<Verdict, ()> {
    let hlen = ip.l4 - ip.l3;
    let quote_len = core::cmp::min(ip.tot_len, MAX_QUOTE);
    // Nothing is changed before the sum is known: an error here leaves the
    // frame as it came.
    f.make_readable(l2.l3 + quote_len)?;
    let sender_mac = Window::<12>::at(f, 0)?.mac(6);
    // The quoted header's own sum is all ones (its checksum was verified),
    // which adds nothing to a one's-complement sum: only the quoted payload
    // counts towards the ICMP checksum.
    let payload_sum = frame::sum(f, ip.l4, quote_len - hlen)?;
    f.truncate(l2.l3 + quote_len)?;
    f.insert_after_mac(NEW_HEADERS)?;
    let h = Window::<NEW_HEADERS>::at(f, l2.l3)?;
    h.set_u16(0, u16::from_ne_bytes([0x45, 0xc0]));
    h.set_u16(2, ((NEW_HEADERS + quote_len) as u16).to_be());
    h.set_u32(4, 0);
    h.set_u16(8, u16::from_ne_bytes([64, IPPROTO_ICMP]));
    h.set_u16(10, 0);
    h.set_u32(12, ip.dst);
    h.set_u32(16, ip.src);
    let ip_sum = h.u32(0) as u64 + h.u32(4) as u64 + h.u32(8) as u64;
    h.set_u16(
        10,
        checksum::complement(ip_sum + h.u32(12) as u64 + h.u32(16) as u64),
    );
    h.set_u16(20, u16::from_ne_bytes([ICMP_DEST_UNREACH, code]));
    h.set_u16(22, 0);
    h.set_u16(24, 0);
    h.set_u16(26, mtu.to_be());
    h.set_u16(
        22,
        checksum::complement(h.u32(20) as u64 + h.u32(24) as u64 + payload_sum),
    );
    let eth = Window::<12>::at(f, 0)?;
    eth.set_mac(0, sender_mac);
    eth.set_mac(6, l2.dst);
    stats::count(outcome::ICMP_ERRORS);
    Ok(Verdict::Reply)
}
