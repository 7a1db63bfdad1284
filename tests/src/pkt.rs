//! Frame builder for the packet tests. Every checksum here is computed from
//! scratch over the whole header or datagram, independently of the data
//! plane's incremental updates, so an expected frame built here is the truth
//! the programs' output is compared against.

use std::net::Ipv4Addr;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// One's-complement sum of `data` folded to 16 bits, complemented.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// A UDP datagram with its checksum (or 0 when `with_checksum` is false).
pub fn udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    if with_checksum {
        let mut all = pseudo(src, dst, 17, len);
        all.extend_from_slice(&u);
        let mut c = checksum(&all);
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

/// A UDP-Lite datagram (RFC 3828) whose checksum covers the whole
/// datagram (coverage 0).
pub fn udplite(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 0, 0, 0]);
    u.extend_from_slice(payload);
    with_pseudo_checksum(src, dst, 136, u, 6)
}

/// A DCCP-Data packet (RFC 4340, short sequence numbers) whose checksum
/// covers the whole packet (CsCov 0).
pub fn dccp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(12 + payload.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    // Data offset (in 4-byte words), CCVal/CsCov, checksum.
    d.extend_from_slice(&[3, 0, 0, 0]);
    // Res/Type=2 (Data)/X=0, 24-bit sequence number, then 4 reserved/ack bytes.
    d.extend_from_slice(&[2 << 1, 0, 0x12, 0x34]);
    d.extend_from_slice(&[0, 0, 0, 0]);
    d.extend_from_slice(payload);
    with_pseudo_checksum(src, dst, 33, d, 6)
}

/// `seg` with the checksum at `off` computed over the pseudo-header and
/// the whole segment (a computed 0 sent as 0xffff, as UDP and UDP-Lite do
/// and which is the same one's-complement value for the others).
fn with_pseudo_checksum(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    mut seg: Vec<u8>,
    off: usize,
) -> Vec<u8> {
    let mut all = pseudo(src, dst, proto, seg.len());
    all.extend_from_slice(&seg);
    let mut c = checksum(&all);
    if c == 0 {
        c = 0xffff;
    }
    seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
    seg
}

/// A TCP segment (ACK|PSH) with its checksum.
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x01020304u32.to_be_bytes());
    t[8..12].copy_from_slice(&0x0a0b0c0du32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    let mut all = pseudo(src, dst, 6, t.len());
    all.extend_from_slice(&t);
    let c = checksum(&all);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An ICMP message of `kind`/`code` with `rest` (the 4 bytes after the
/// checksum) and `body`, with its checksum.
pub fn icmp(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// IPv4 header fields the tests vary.
#[derive(Clone, Debug)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset (in 8-byte units), as on the wire.
    pub frag: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl Ip {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x1234,
            frag: 0x4000,
            options: Vec::new(),
        }
    }

    /// Header plus `payload`, with the header checksum.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.options.len();
        assert_eq!(self.options.len() % 4, 0);
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[6..8].copy_from_slice(&self.frag.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        h[20..].copy_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// An Ethernet frame, optionally with one 802.1Q tag.
pub fn eth(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let tags: Vec<_> = vlan.map(|tci| (0x8100, tci)).into_iter().collect();
    eth_tagged(dst, src, &tags, ethertype, payload)
}

/// An Ethernet frame with the given stack of tags, outermost first, each
/// as (TPID, TCI): 0x8100 for 802.1Q, 0x88a8 for an 802.1ad service tag.
pub fn eth_tagged(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `frame` (untagged) with the tag stack `tags` inserted after its MACs.
pub fn with_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&frame[..6]);
    src.copy_from_slice(&frame[6..12]);
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    eth_tagged(dst, src, tags, ethertype, &frame[14..])
}

/// An IPv4 frame from MAC_B to MAC_A.
pub fn ipv4_frame(ip: &Ip, l4: &[u8]) -> Vec<u8> {
    eth(MAC_A, MAC_B, None, 0x0800, &ip.packet(l4))
}

/// An ARP packet inside an Ethernet frame.
pub fn arp(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&0x0800u16.to_be_bytes());
    a.push(6);
    a.push(4);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    eth(eth_dst, eth_src, None, 0x0806, &a)
}

/// Splits an IP datagram's payload into fragments of `chunk` bytes (a
/// multiple of 8) and returns each fragment's IP packet.
pub fn fragments(ip: &Ip, payload: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let mut h = ip.clone();
        let more = if end < payload.len() { 0x2000 } else { 0 };
        h.frag = more | (off / 8) as u16;
        out.push(h.packet(&payload[off..end]));
        off = end;
    }
    out
}

/// Splits an IP datagram's payload at the byte offsets `cuts` (each a
/// multiple of 8, ascending) and returns each fragment's IP packet.
pub fn fragments_at(ip: &Ip, payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(payload.len());
    bounds
        .windows(2)
        .map(|w| {
            assert_eq!(w[0] % 8, 0);
            let mut h = ip.clone();
            let more = if w[1] < payload.len() { 0x2000 } else { 0 };
            h.frag = more | (w[0] / 8) as u16;
            h.packet(&payload[w[0]..w[1]])
        })
        .collect()
}

/// Checks every checksum a frame carries (IPv4 header; TCP/UDP/UDP-Lite/DCCP/ICMP over
/// the whole datagram when it is complete and not a fragment; the quoted
/// header of an ICMP error). Returns a description of the first bad one.
pub fn verify(frame: &[u8]) -> Result<(), String> {
    // Frames too short to hold what their headers announce are malformed:
    // nothing to verify (the tests compare them byte for byte instead).
    if frame.len() < 34 {
        return Ok(());
    }
    let mut l3 = 14;
    let mut et = u16::from_be_bytes([frame[12], frame[13]]);
    if et == 0x8100 {
        et = u16::from_be_bytes([frame[16], frame[17]]);
        l3 = 18;
    }
    if et != 0x0800 {
        return Ok(());
    }
    let ip = &frame[l3..];
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if checksum(&ip[..hlen]) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if tot > ip.len() || hlen < 20 || hlen > tot {
        return Ok(());
    }
    if frag & 0x3fff != 0 {
        return Ok(());
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[hlen..tot];
    match ip[9] {
        // Built with full coverage (UDP-Lite coverage 0, DCCP CsCov 0).
        6 | 17 | 136 | 33 => {
            if ip[9] == 17 && l4[6] == 0 && l4[7] == 0 {
                return Ok(());
            }
            let mut all = pseudo(src, dst, ip[9], l4.len());
            all.extend_from_slice(l4);
            if checksum(&all) != 0 {
                return Err(format!("bad L4 checksum (proto {})", ip[9]));
            }
        }
        1 => {
            if checksum(l4) != 0 {
                return Err("bad ICMP checksum".into());
            }
            if matches!(l4[0], 3 | 11 | 12) && l4.len() >= 28 {
                let q = &l4[8..];
                let qh = ((q[0] & 0x0f) as usize) * 4;
                if q.len() >= qh && checksum(&q[..qh]) != 0 {
                    return Err("bad quoted IPv4 header checksum".into());
                }
            }
        }
        _ => {}
    }
    Ok(())
}
