//! ARP: the external NIC answers requests for associated floating IPs
//! itself, so floating IPs need not be configured on any interface.

use floatip_common::outcome;

use crate::{
    frame::{Frame, ptr_at, read_u16, read_u32, write_u16, write_u32},
    maps, stats,
    translate::Verdict,
};

const ARPHRD_ETHER: u16 = 1u16.to_be();
const ARPOP_REQUEST: u16 = 1u16.to_be();
const ARPOP_REPLY: u16 = 2u16.to_be();

/// Turns a request for an associated floating IP into its reply in place.
#[inline(always)]
pub fn answer<F: Frame>(f: &mut F, l3: usize, ifindex: u32) -> Result<Verdict, ()> {
    // htype, ptype, hlen/plen, op: anything but Ethernet/IPv4 requests is not ours.
    if read_u16(f, l3)? != ARPHRD_ETHER
        || read_u16(f, l3 + 2)? != crate::parse::ETH_P_IP
        || read_u16(f, l3 + 4)? != u16::from_ne_bytes([6, 4])
        || read_u16(f, l3 + 6)? != ARPOP_REQUEST
    {
        return Ok(Verdict::Pass);
    }
    let spa = read_u32(f, l3 + 14)?;
    let tpa = read_u32(f, l3 + 24)?;
    // A gratuitous announcement (sender == target) asks nothing.
    if spa == tpa || maps::fixed_of(tpa).is_none() {
        return Ok(Verdict::Pass);
    }
    let Some(nic) = maps::iface(ifindex) else {
        return Ok(Verdict::Pass);
    };
    let sha: [u8; 6] = unsafe { *ptr_at::<F, [u8; 6]>(f, l3 + 8)? };
    write_u16(f, l3 + 6, ARPOP_REPLY)?;
    unsafe {
        *ptr_at::<F, [u8; 6]>(f, l3 + 18)? = sha;
        *ptr_at::<F, [u8; 6]>(f, l3 + 8)? = nic.mac;
        *ptr_at::<F, [u8; 6]>(f, 0)? = sha;
        *ptr_at::<F, [u8; 6]>(f, 6)? = nic.mac;
    }
    write_u32(f, l3 + 24, spa)?;
    write_u32(f, l3 + 14, tpa)?;
    stats::count(outcome::ARP_REPLIES);
    Ok(Verdict::Reply)
}
