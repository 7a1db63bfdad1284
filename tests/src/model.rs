//! A reference model of the translation, written from the rules and not
//! from the eBPF code: decode the frame, substitute addresses, and compute
//! every checksum from scratch wherever the bytes it covers are all present.
//! Only a checksum over bytes the packet does not carry (a fragment's L4
//! checksum, the L4 checksum inside a truncated ICMP quote) is adjusted
//! arithmetically, by adding the difference of the address words.

use std::net::Ipv4Addr;

use crate::pkt::checksum;

/// What the data plane knows: the associations and the pool.
pub struct Table {
    pub pairs: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Pool prefix (address, length) and its excluded addresses.
    pub pool: (Ipv4Addr, u8),
    pub excluded: Vec<Ipv4Addr>,
}

impl Table {
    fn fixed_of(&self, f: Ipv4Addr) -> Option<Ipv4Addr> {
        self.pairs.iter().find(|p| p.0 == f).map(|p| p.1)
    }
    fn floating_of(&self, x: Ipv4Addr) -> Option<Ipv4Addr> {
        self.pairs.iter().find(|p| p.1 == x).map(|p| p.0)
    }
    fn in_pool(&self, a: Ipv4Addr) -> bool {
        let (net, len) = self.pool;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        (u32::from(a) & mask) == (u32::from(net) & mask) && !self.excluded.contains(&a)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// To the kernel (translated or not, see the bytes).
    Pass,
    Drop,
    /// An ARP reply sent back out.
    Reply,
}

fn addr(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

fn put(b: &mut [u8], off: usize, a: Ipv4Addr) {
    b[off..off + 4].copy_from_slice(&a.octets());
}

/// Adjusts the checksum at `b[off..off+2]` for a 4-byte value changing from
/// `old` to `new` somewhere in the bytes it covers (RFC 1071 arithmetic).
fn adjust(b: &mut [u8], off: usize, old: Ipv4Addr, new: Ipv4Addr, udp: bool) {
    let c = u16::from_be_bytes([b[off], b[off + 1]]);
    if udp && c == 0 {
        return;
    }
    let o = old.octets();
    let n = new.octets();
    let mut sum = (!c) as u32;
    sum += (!u16::from_be_bytes([o[0], o[1]])) as u32 + (!u16::from_be_bytes([o[2], o[3]])) as u32;
    sum += u16::from_be_bytes([n[0], n[1]]) as u32 + u16::from_be_bytes([n[2], n[3]]) as u32;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut r = !(sum as u16);
    if udp && r == 0 {
        r = 0xffff;
    }
    b[off..off + 2].copy_from_slice(&r.to_be_bytes());
}

fn set_csum(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Recomputes the IPv4 header checksum of the header at `ip`.
fn fix_ip_header(b: &mut [u8], ip: usize, hlen: usize) {
    set_csum(b, ip + 10, 0);
    let c = checksum(&b[ip..ip + hlen]);
    set_csum(b, ip + 10, c);
}

/// A well-formed IPv4 packet as the model sees it.
struct V4 {
    l3: usize,
    hlen: usize,
    end: usize,
    proto: u8,
    /// Fragment offset in bytes.
    frag: usize,
    whole: bool,
    /// The header checksum holds.
    intact: bool,
}

fn parse(f: &[u8]) -> Option<(V4, bool)> {
    if f.len() < 14 {
        return None;
    }
    let (et, l3, vlan) = match u16::from_be_bytes([f[12], f[13]]) {
        0x8100 | 0x88a8 if f.len() >= 18 => (u16::from_be_bytes([f[16], f[17]]), 18, true),
        0x8100 | 0x88a8 => return None,
        et => (et, 14, false),
    };
    if et != 0x0800 || f.len() < l3 + 20 || f[l3] >> 4 != 4 {
        return None;
    }
    let hlen = ((f[l3] & 15) as usize) * 4;
    let tot = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
    if hlen < 20 || tot < hlen || l3 + tot > f.len() {
        return None;
    }
    let frag = u16::from_be_bytes([f[l3 + 6], f[l3 + 7]]);
    Some((
        V4 {
            l3,
            hlen,
            end: l3 + tot,
            proto: f[l3 + 9],
            frag: ((frag & 0x1fff) as usize) * 8,
            whole: frag & 0x3fff == 0,
            intact: checksum(&f[l3..l3 + hlen]) == 0,
        },
        vlan,
    ))
}

/// Where the transport checksum covering the pseudo-header lies in a
/// segment (RFC 793, 768, 3828, 4340) and whether it is UDP's (0: none).
fn pseudo_checksum(proto: u8) -> Option<(usize, bool)> {
    match proto {
        6 => Some((16, false)),
        17 => Some((6, true)),
        136 | 33 => Some((6, false)),
        _ => None,
    }
}

/// Replaces the address at `field` (12 src, 16 dst) of the packet, keeping
/// every checksum right, wherever in the fragmented datagram it lies.
fn substitute(b: &mut [u8], v: &V4, field: usize, new: Ipv4Addr) {
    let old = addr(b, v.l3 + field);
    put(b, v.l3 + field, new);
    fix_ip_header(b, v.l3, v.hlen);
    let l4 = v.l3 + v.hlen;
    let Some((at, udp)) = pseudo_checksum(v.proto) else {
        return;
    };
    if at < v.frag || at + 2 > v.frag + (v.end - l4) {
        return;
    }
    let off = l4 + at - v.frag;
    if v.whole {
        // Whole datagram present: compute from scratch (UDP 0 stays 0).
        if udp && b[off] == 0 && b[off + 1] == 0 {
            return;
        }
        set_csum(b, off, 0);
        let mut ph = Vec::new();
        ph.extend_from_slice(&b[v.l3 + 12..v.l3 + 20]);
        ph.extend_from_slice(&[0, v.proto]);
        ph.extend_from_slice(&((v.end - l4) as u16).to_be_bytes());
        ph.extend_from_slice(&b[l4..v.end]);
        let mut c = checksum(&ph);
        if v.proto != 6 && c == 0 {
            c = 0xffff;
        }
        set_csum(b, off, c);
    } else {
        adjust(b, off, old, new, udp);
    }
}

/// In an ICMP error, replaces the quoted address at `field` if it is `old`.
fn substitute_quote(b: &mut [u8], v: &V4, field: usize, old: Ipv4Addr, new: Ipv4Addr) {
    let icmp = v.l3 + v.hlen;
    if v.proto != 1 || v.frag != 0 || icmp + 28 > v.end || !matches!(b[icmp], 3 | 11 | 12) {
        return;
    }
    let q = icmp + 8;
    let qh = ((b[q] & 15) as usize) * 4;
    if b[q] >> 4 != 4 || qh < 20 || q + qh > v.end || addr(b, q + field) != old {
        return;
    }
    put(b, q + field, new);
    fix_ip_header(b, q, qh);
    let qfrag = u16::from_be_bytes([b[q + 6], b[q + 7]]);
    let ql4 = q + qh;
    if qfrag & 0x1fff == 0
        && let Some((at, udp)) = pseudo_checksum(b[q + 9])
        && ql4 + at + 2 <= v.end
    {
        adjust(b, ql4 + at, old, new, udp);
    }
    if v.whole {
        set_csum(b, icmp + 2, 0);
        let c = checksum(&b[icmp..v.end]);
        set_csum(b, icmp + 2, c);
    }
}

/// Martian sources (RFC 1812 §5.3.7).
fn martian(a: Ipv4Addr) -> bool {
    let o = a.octets()[0];
    o == 0 || o == 127 || o >= 224
}

/// A router routes only what is addressed to its MAC, with a header
/// checksum that holds.
fn routable(b: &[u8], v: &V4, mac: [u8; 6]) -> bool {
    b[..6] == mac && v.intact
}

/// The external NIC's program.
pub fn external(frame: &[u8], t: &Table, mac: [u8; 6]) -> (Action, Vec<u8>) {
    let mut b = frame.to_vec();
    // Tagged ARP belongs to a VLAN device; only broadcast or our MAC.
    if b.len() >= 14 + 28 && b[12..14] == [0x08, 0x06] && (b[..6] == [0xff; 6] || b[..6] == mac) {
        let a = 14;
        let is_req = b[a..a + 8] == [0, 1, 8, 0, 6, 4, 0, 1];
        let (spa, tpa) = (addr(&b, a + 14), addr(&b, a + 24));
        if is_req && spa != tpa && t.fixed_of(tpa).is_some() {
            let sha: [u8; 6] = b[a + 8..a + 14].try_into().unwrap();
            b[0..6].copy_from_slice(&sha);
            b[6..12].copy_from_slice(&mac);
            b[a + 7] = 2;
            b[a + 8..a + 14].copy_from_slice(&mac);
            put(&mut b, a + 14, tpa);
            b[a + 18..a + 24].copy_from_slice(&sha);
            put(&mut b, a + 24, spa);
            return (Action::Reply, b);
        }
        return (Action::Pass, b);
    }
    let Some((v, _)) = parse(&b) else {
        return (Action::Pass, b);
    };
    let (src, dst) = (addr(&b, v.l3 + 12), addr(&b, v.l3 + 16));
    if t.floating_of(src).is_some() {
        return (Action::Drop, b);
    }
    match t.fixed_of(dst) {
        Some(_) if !routable(&b, &v, mac) => (Action::Pass, b),
        Some(_) if martian(src) || t.fixed_of(src).is_some() || t.in_pool(src) => (Action::Drop, b),
        Some(_) if b[v.l3 + 8] <= 1 => (Action::Pass, b),
        Some(fixed) => {
            substitute(&mut b, &v, 16, fixed);
            substitute_quote(&mut b, &v, 12, dst, fixed);
            (Action::Pass, b)
        }
        None if t.in_pool(dst) => (Action::Drop, b),
        None => (Action::Pass, b),
    }
}

/// The gateway's own destinations in the fixture's FIB (see `Fixture`).
fn local(a: Ipv4Addr) -> bool {
    a == crate::fixture::GW_INT
        || a == crate::fixture::ROUTER
        || a == Ipv4Addr::new(10, 0, 0, 255)
        || a.octets()[0] == 127
}

/// The internal NIC's program.
pub fn internal(frame: &[u8], t: &Table, mac: [u8; 6]) -> (Action, Vec<u8>) {
    let mut b = frame.to_vec();
    let Some((v, _)) = parse(&b) else {
        return (Action::Pass, b);
    };
    let (src, dst) = (addr(&b, v.l3 + 12), addr(&b, v.l3 + 16));
    let snat = t.floating_of(src);
    let dnat = t.fixed_of(dst);
    if snat.is_none() && t.in_pool(src) {
        return (Action::Drop, b);
    }
    if (snat.is_none() && dnat.is_none()) || !routable(&b, &v, mac) {
        return (Action::Pass, b);
    }
    if dnat.is_some() && martian(src) {
        return (Action::Drop, b);
    }
    if b[v.l3 + 8] <= 1 {
        return (Action::Pass, b);
    }
    // For the gateway itself: not SNATed.
    if dnat.is_none() && local(dst) {
        return (Action::Pass, b);
    }
    if let Some(f) = snat {
        substitute(&mut b, &v, 12, f);
        substitute_quote(&mut b, &v, 16, src, f);
    }
    if let Some(x) = dnat {
        substitute(&mut b, &v, 16, x);
        substitute_quote(&mut b, &v, 12, dst, x);
    }
    (Action::Pass, b)
}
