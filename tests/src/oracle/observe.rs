//! What came out of a gateway, decoded into named fields that two
//! gateways' outputs are compared by: addresses, TTL, options, whether each
//! checksum is valid (computed from scratch here), ports, ICMP type/code,
//! the quoted header of an ICMP error, and a hash of the payload.
//!
//! IPv4 fragments are reassembled first (exact duplicates dropped, as the
//! kernel does): the oracle reassembles and refragments, floatip forwards
//! each fragment as it came, and either is right if the receiver gets the
//! same datagram.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use super::socket::Received;
use crate::pkt::checksum;

/// Where a frame was captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Point {
    /// Sent by the gateway to the router (the external side).
    Ext,
    /// Sent by the gateway into the tenant network.
    Int,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Ext => "ext",
            Point::Int => "int",
        }
    }
}

/// Case tags: a case's ports / ICMP ids / IP ids / first payload bytes
/// carry its tag, so whatever a frame caused can be told apart later.
pub const TAG_BASE: u16 = 0x4000;
pub const TAG_END: u16 = 0xc000;
/// ICMP echo id of the barrier frames sent after each case.
pub const MARKER_ID: u16 = 0x3ffe;

fn is_tag(v: u16) -> bool {
    (TAG_BASE..TAG_END).contains(&v)
}

/// Decoded fields by name.
pub type Fields = BTreeMap<&'static str, String>;

/// One frame (or reassembled datagram) as seen at a point.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub point: Point,
    pub fields: Fields,
}

impl Seen {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }

    /// A one-line summary for reports.
    pub fn summary(&self) -> String {
        let g = |k| self.get(k).unwrap_or("?");
        if let Some(op) = self.get("arp.op") {
            return format!("ARP op {op} {} -> {}", g("arp.spa"), g("arp.tpa"));
        }
        if self.get("ip.src").is_none() {
            return format!("ethertype {}", g("eth.type"));
        }
        let mut s = format!(
            "{} -> {} proto {} ttl {}",
            g("ip.src"),
            g("ip.dst"),
            g("ip.proto"),
            g("ip.ttl")
        );
        if let Some(t) = self.get("icmp.type") {
            s.push_str(&format!(" icmp {t}/{}", g("icmp.code")));
            if let Some(q) = self.get("q.src") {
                s.push_str(&format!(" quoting {q} -> {}", g("q.dst")));
            }
        }
        s
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.point.name(), self.summary())
    }
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The pseudo-header sum's contribution as bytes (src, dst, 0, proto, len).
fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// Offset of the checksum field and the number of bytes it covers, for
/// protocols whose checksum includes the IPv4 pseudo-header.
fn pseudo_checksummed(proto: u8, l4: &[u8]) -> Option<(usize, usize)> {
    match proto {
        6 if l4.len() >= 20 => Some((16, l4.len())),
        17 if l4.len() >= 8 => Some((6, l4.len())),
        // UDP-Lite (RFC 3828): coverage in the length field, 0 = everything.
        136 if l4.len() >= 8 => {
            let cov = be16(l4, 4) as usize;
            Some((
                6,
                if cov == 0 {
                    l4.len()
                } else {
                    cov.min(l4.len())
                },
            ))
        }
        // DCCP (RFC 4340 §9): CsCov in the low nibble of byte 5, 0 = all,
        // else the header plus (CsCov - 1) * 4 bytes of application data.
        33 if l4.len() >= 12 => {
            let doff = (l4[4] as usize) * 4;
            let cscov = (l4[5] & 0x0f) as usize;
            let cov = if cscov == 0 {
                l4.len()
            } else {
                doff + (cscov - 1) * 4
            };
            Some((6, cov.min(l4.len())))
        }
        _ => None,
    }
}

/// "ok", "bad", "none" (UDP without checksum) or "partial-ok"/"partial-bad"
/// (CHECKSUM_PARTIAL: the field holds the pseudo-header sum only).
fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8], partial: bool) -> String {
    if proto == 1 {
        return if checksum(l4) == 0 { "ok" } else { "bad" }.into();
    }
    let Some((at, cov)) = pseudo_checksummed(proto, l4) else {
        return "n/a".into();
    };
    if proto == 17 && be16(l4, 6) == 0 {
        return "none".into();
    }
    let mut all = pseudo(src, dst, proto, l4.len());
    if partial {
        // The field must be the folded pseudo-header sum.
        let want = !checksum(&all);
        return if be16(l4, at) == want {
            "partial-ok"
        } else {
            "partial-bad"
        }
        .into();
    }
    all.extend_from_slice(&l4[..cov]);
    if checksum(&all) == 0 {
        "ok".into()
    } else {
        "bad".into()
    }
}

fn is_icmp_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// Decodes a captured frame; IPv4 fragments are returned for reassembly.
fn decode(point: Point, r: &Received) -> Decoded {
    let b = &r.bytes;
    let mut f = BTreeMap::new();
    if b.len() < 14 {
        f.insert("eth.runt", hex(b));
        return Decoded::Frame(Seen { point, fields: f });
    }
    f.insert("eth.dst", mac(&b[0..6]));
    f.insert("eth.src", mac(&b[6..12]));
    let mut at = 12;
    let mut tags = Vec::new();
    while b.len() >= at + 4 && matches!(be16(b, at), 0x8100 | 0x88a8) {
        tags.push(format!("{:04x}:{}", be16(b, at), be16(b, at + 2)));
        at += 4;
    }
    f.insert(
        "eth.vlan",
        if tags.is_empty() {
            "-".into()
        } else {
            tags.join(",")
        },
    );
    if b.len() < at + 2 {
        return Decoded::Frame(Seen { point, fields: f });
    }
    let et = be16(b, at);
    f.insert("eth.type", format!("{et:04x}"));
    let l3 = &b[at + 2..];
    match et {
        0x0806 if l3.len() >= 28 => {
            f.insert("arp.op", be16(l3, 6).to_string());
            f.insert("arp.sha", mac(&l3[8..14]));
            f.insert("arp.spa", addr(l3, 14).to_string());
            f.insert("arp.tha", mac(&l3[18..24]));
            f.insert("arp.tpa", addr(l3, 24).to_string());
            Decoded::Frame(Seen { point, fields: f })
        }
        0x0800 if l3.len() >= 20 && l3[0] >> 4 == 4 => {
            let hlen = ((l3[0] & 0x0f) as usize) * 4;
            let tot = be16(l3, 2) as usize;
            if hlen < 20 || l3.len() < hlen || tot < hlen || tot > l3.len() {
                f.insert("ip.malformed", hex(&l3[..l3.len().min(24)]));
                return Decoded::Frame(Seen { point, fields: f });
            }
            let frag = be16(l3, 6);
            let ip = l3[..tot].to_vec();
            if frag & 0x3fff != 0 {
                Decoded::Fragment {
                    point,
                    eth: f,
                    ip,
                    partial: r.csum_partial,
                }
            } else {
                ipv4(&mut f, &ip, r.csum_partial, None);
                Decoded::Frame(Seen { point, fields: f })
            }
        }
        _ => {
            f.insert("raw", format!("len={} fnv={:016x}", l3.len(), fnv(l3)));
            Decoded::Frame(Seen { point, fields: f })
        }
    }
}

enum Decoded {
    Frame(Seen),
    Fragment {
        point: Point,
        eth: Fields,
        ip: Vec<u8>,
        partial: bool,
    },
}

/// Adds the fields of a complete IPv4 datagram `ip` (header + payload).
/// `frag_note` says how it was assembled (None: it was not fragmented).
fn ipv4(f: &mut Fields, ip: &[u8], partial: bool, frag_note: Option<(&str, bool)>) {
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    let src = addr(ip, 12);
    let dst = addr(ip, 16);
    let proto = ip[9];
    f.insert("ip.src", src.to_string());
    f.insert("ip.dst", dst.to_string());
    f.insert("ip.ttl", ip[8].to_string());
    f.insert("ip.proto", proto.to_string());
    f.insert("ip.tos", ip[1].to_string());
    f.insert("ip.df", ((be16(ip, 6) & 0x4000) != 0).to_string());
    f.insert("ip.len", ip.len().to_string());
    f.insert("ip.options", options(&ip[20..hlen]));
    let csum_ok = match frag_note {
        Some((_, all_ok)) => all_ok,
        None => checksum(&ip[..hlen]) == 0,
    };
    f.insert("ip.csum", if csum_ok { "ok" } else { "bad" }.into());
    f.insert(
        "ip.fragmented",
        frag_note.map_or("no".into(), |(n, _)| n.to_string()),
    );
    let l4 = &ip[hlen..];
    f.insert("l4.csum", l4_checksum(src, dst, proto, l4, partial));
    let mut tag = None;
    match proto {
        1 if l4.len() >= 8 => {
            f.insert("icmp.type", l4[0].to_string());
            f.insert("icmp.code", l4[1].to_string());
            f.insert("icmp.rest", hex(&l4[4..8]));
            if is_icmp_error(l4[0]) {
                tag = quote(f, &l4[8..]);
            } else {
                if matches!(l4[0], 0 | 8) {
                    tag = Some(be16(l4, 4));
                }
                f.insert("payload", payload(&l4[8..]));
            }
        }
        6 | 17 | 136 | 33 | 132 if l4.len() >= 8 => {
            f.insert("l4.sport", be16(l4, 0).to_string());
            f.insert("l4.dport", be16(l4, 2).to_string());
            let hdr = match proto {
                6 if l4.len() >= 20 => {
                    f.insert("tcp.flags", format!("{:02x}", l4[13]));
                    f.insert("tcp.seq", hex(&l4[4..8]));
                    f.insert("tcp.ack", hex(&l4[8..12]));
                    ((l4[12] >> 4) as usize * 4).min(l4.len())
                }
                33 => ((l4[4] as usize) * 4).min(l4.len()),
                132 => 12,
                _ => 8,
            };
            f.insert("payload", payload(&l4[hdr..]));
            tag = [be16(l4, 0), be16(l4, 2)].into_iter().find(|v| is_tag(*v));
        }
        _ => {
            f.insert("payload", payload(l4));
            if l4.len() >= 2 {
                tag = Some(be16(l4, 0));
            }
        }
    }
    if frag_note.is_some() && tag.is_none_or(|t| !is_tag(t)) {
        tag = Some(be16(ip, 4));
    }
    if let Some(t) = tag.filter(|t| is_tag(*t) || *t == MARKER_ID) {
        f.insert("tag", t.to_string());
    }
}

/// IP options as hex, except that a Timestamp option's stamps (times of
/// day, different in every run) are shown as how many were recorded.
fn options(o: &[u8]) -> String {
    if o.is_empty() {
        return "-".into();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < o.len() {
        let len = match o[i] {
            0 | 1 => 1,
            _ if i + 1 < o.len() => (o[i + 1] as usize).clamp(2, o.len() - i),
            _ => o.len() - i,
        };
        let opt = &o[i..i + len];
        if opt[0] == 0x44 && len >= 4 {
            parts.push(format!(
                "timestamp(pointer {}, overflow/flags {:02x})",
                opt[2], opt[3]
            ));
        } else {
            parts.push(hex(opt));
        }
        i += len;
    }
    parts.join(" ")
}

fn payload(b: &[u8]) -> String {
    format!("len={} fnv={:016x}", b.len(), fnv(b))
}

/// Fields of the datagram an ICMP error quotes; returns the quote's tag.
fn quote(f: &mut Fields, q: &[u8]) -> Option<u16> {
    f.insert("q.bytes", q.len().to_string());
    if q.len() < 20 || q[0] >> 4 != 4 {
        f.insert("q.raw", hex(&q[..q.len().min(28)]));
        return None;
    }
    let hlen = ((q[0] & 0x0f) as usize) * 4;
    if hlen < 20 || q.len() < hlen {
        f.insert("q.raw", hex(&q[..q.len().min(28)]));
        return None;
    }
    let src = addr(q, 12);
    let dst = addr(q, 16);
    let proto = q[9];
    f.insert("q.src", src.to_string());
    f.insert("q.dst", dst.to_string());
    f.insert("q.proto", proto.to_string());
    f.insert("q.ttl", q[8].to_string());
    f.insert("q.len", be16(q, 2).to_string());
    f.insert("q.id", be16(q, 4).to_string());
    f.insert("q.frag", format!("{:04x}", be16(q, 6)));
    f.insert(
        "q.csum",
        if checksum(&q[..hlen]) == 0 {
            "ok"
        } else {
            "bad"
        }
        .into(),
    );
    if hlen > 20 {
        f.insert("q.options", options(&q[20..hlen]));
    }
    let l4 = &q[hlen..];
    let mut tag = None;
    if l4.len() >= 4 {
        let (a, b) = (be16(l4, 0), be16(l4, 2));
        if proto == 1 {
            f.insert("q.icmp", hex(&l4[..l4.len().min(8)]));
            if l4.len() >= 6 {
                tag = Some(be16(l4, 4));
            }
        } else {
            f.insert("q.sport", a.to_string());
            f.insert("q.dport", b.to_string());
            tag = [a, b].into_iter().find(|v| is_tag(*v));
            if !matches!(proto, 6 | 17 | 136 | 33 | 132) {
                tag = Some(a);
            }
        }
    }
    // The quoted L4 checksum: its raw value (a NAT must update it like the
    // addresses), and whether it is right when the whole datagram is quoted.
    let frag = be16(q, 6) & 0x3fff;
    if let Some((at, _)) =
        pseudo_checksummed(proto, l4).or(if proto == 1 { Some((2, 0)) } else { None })
        && l4.len() >= at + 2
    {
        f.insert("q.l4csum", hex(&l4[at..at + 2]));
        if be16(q, 2) as usize == q.len() && frag == 0 {
            f.insert("q.l4csum.valid", l4_checksum(src, dst, proto, l4, false));
        }
    }
    f.insert("q.rest", payload(l4.get(8..).unwrap_or(&[])));
    if tag.is_none_or(|t| !is_tag(t)) {
        tag = Some(be16(q, 4));
    }
    tag
}

/// Decodes frames, reassembling IPv4 fragments per (point, src, dst,
/// proto, id). Fragments that do not make one datagram (overlap, gaps)
/// are reported as such, with the header of the first.
pub fn decode_all(frames: &[(Point, Received)]) -> Vec<Seen> {
    let mut out = Vec::new();
    type Key = (Point, [u8; 4], [u8; 4], u8, u16);
    // Per datagram: the first fragment's Ethernet fields, the fragments,
    // and whether any had a partial checksum.
    type Train = (Fields, Vec<Vec<u8>>, bool);
    let mut trains: BTreeMap<Key, Train> = BTreeMap::new();
    for (point, r) in frames {
        match decode(*point, r) {
            Decoded::Frame(s) => out.push(s),
            Decoded::Fragment {
                point,
                eth,
                ip,
                partial,
            } => {
                let key = (
                    point,
                    ip[12..16].try_into().unwrap(),
                    ip[16..20].try_into().unwrap(),
                    ip[9],
                    be16(&ip, 4),
                );
                let e = trains
                    .entry(key)
                    .or_insert_with(|| (eth, Vec::new(), false));
                e.1.push(ip);
                e.2 |= partial;
            }
        }
    }
    for ((point, ..), (eth, frags, partial)) in trains {
        out.push(reassemble(point, eth, frags, partial));
    }
    out
}

fn reassemble(point: Point, mut f: Fields, mut frags: Vec<Vec<u8>>, partial: bool) -> Seen {
    let all_ok = frags.iter().all(|ip| {
        let hlen = ((ip[0] & 0x0f) as usize) * 4;
        checksum(&ip[..hlen]) == 0
    });
    let off = |ip: &Vec<u8>| ((be16(ip, 6) & 0x1fff) as usize) * 8;
    let hlen = |ip: &Vec<u8>| ((ip[0] & 0x0f) as usize) * 4;
    frags.sort_by_key(|ip| (off(ip), ip.len()));
    frags.dedup();
    let mut data = Vec::new();
    let mut complete = false;
    let mut problem = None;
    for ip in &frags {
        let o = off(ip);
        let body = &ip[hlen(ip)..];
        if o < data.len() {
            problem = Some("overlap");
            break;
        }
        if o > data.len() {
            problem = Some("gap");
            break;
        }
        data.extend_from_slice(body);
        complete = be16(ip, 6) & 0x2000 == 0;
    }
    let first = &frags[0];
    if let Some(p) = problem.or((!complete).then_some("incomplete")) {
        f.insert("ip.src", addr(first, 12).to_string());
        f.insert("ip.dst", addr(first, 16).to_string());
        f.insert("ip.proto", first[9].to_string());
        f.insert("ip.ttl", first[8].to_string());
        f.insert("ip.fragmented", format!("{p} ({} fragments)", frags.len()));
        f.insert("tag", be16(first, 4).to_string());
    } else {
        let h = hlen(first);
        let mut ip = first[..h].to_vec();
        ip.extend_from_slice(&data);
        let tot = ip.len() as u16;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        let df = be16(first, 6) & 0x4000;
        ip[6..8].copy_from_slice(&df.to_be_bytes());
        ipv4(&mut f, &ip, partial, Some(("yes", all_ok)));
    }
    Seen { point, fields: f }
}
