//! ARP: the external NIC answers requests for associated floating IPs
//! itself, so floating IPs need not be configured on any interface; a pool
//! bound to one external NIC (`pool create --external`) is answered there only.

use floatip_common::outcome;

use crate::{
    frame::{Frame, Window},
    maps,
    parse::{BROADCAST, L2},
    stats,
    verdict::Verdict,
};

const ARPHRD_ETHER: u16 = 1u16.to_be();
const ARPOP_REQUEST: u16 = 1u16.to_be();
const ARPOP_REPLY: u16 = 2u16.to_be();

/// Turns a request for an associated floating IP into its reply in place.
/// Only untagged requests broadcast or unicast to this NIC (RFC 1122
/// §2.3.2.1 unicast polls) are answered: one unicast to another MAC is that
/// host's, and a tagged one belongs to a VLAN device the kernel owns.
#[inline(always)]
pub fn answer<F: Frame>(f: &mut F, l2: &L2, ifindex: u32) -> Result<Verdict, ()> {
    if l2.vlan {
        return Ok(Verdict::Pass);
    }
    let l3 = l2.l3;
    let a = Window::<28>::at(f, l3)?;
    // htype, ptype, hlen/plen, op: anything but Ethernet/IPv4 requests is not ours.
    if a.u16(0) != ARPHRD_ETHER
        || a.u16(2) != crate::parse::ETH_P_IP
        || a.u16(4) != u16::from_ne_bytes([6, 4])
        || a.u16(6) != ARPOP_REQUEST
    {
        return Ok(Verdict::Pass);
    }
    let spa = a.u32(14);
    let tpa = a.u32(24);
    // A gratuitous announcement (sender == target) asks nothing. A floating IP
    // of a pool bound to another external NIC is that network's, not this one's.
    if spa == tpa || maps::fixed_of(tpa).is_none() || !maps::pool_answers_on(tpa, ifindex) {
        return Ok(Verdict::Pass);
    }
    let Some(nic_mac) = maps::managed_mac(ifindex) else {
        return Ok(Verdict::Pass);
    };
    if l2.dst != BROADCAST && l2.dst != nic_mac {
        return Ok(Verdict::Pass);
    }
    // Map lookups leave packet pointers valid, but take the windows again
    // so nothing relies on that.
    let a = Window::<28>::at(f, l3)?;
    let sha = a.mac(8);
    a.set_u16(6, ARPOP_REPLY);
    a.set_mac(18, sha);
    a.set_mac(8, nic_mac);
    a.set_u32(24, spa);
    a.set_u32(14, tpa);
    let eth = Window::<12>::at(f, 0)?;
    eth.set_mac(0, sha);
    eth.set_mac(6, nic_mac);
    stats::count(outcome::ARP_REPLIES);
    Ok(Verdict::Reply)
}
