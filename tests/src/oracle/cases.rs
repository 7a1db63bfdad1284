//! Generated cases: each varies one thing (its class) from an ordinary
//! packet of a random flow, in one direction, so that a difference points
//! at one cause. Every case carries its tag (see `observe`) in its ports,
//! ICMP id, IP id or first payload bytes.

use std::net::Ipv4Addr;

use super::{
    gateway::*,
    observe::{TAG_BASE, TAG_END},
};
use crate::{
    pkt::{self, Ip, checksum},
    rng::Rng,
};

/// Where a frame is injected: `In` from the router towards the gateway's
/// external NIC, `Out` from inst1 towards its internal NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    In,
    Out,
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::In => "inbound",
            Dir::Out => "outbound",
        }
    }
}

/// One generated case.
#[derive(Clone, Debug)]
pub struct Case {
    pub n: usize,
    pub tag: u16,
    pub class: &'static str,
    pub dir: Dir,
    /// What was generated, for the report.
    pub what: String,
    /// Frames in the order they are sent, each with where it is injected.
    pub frames: Vec<(Dir, Vec<u8>)>,
}

impl Case {
    /// Whether the case makes a router's kernel send a route error
    /// (unreachable) to inst1: the kernel sends at most one per second to
    /// one source, so the next such case must wait for the token.
    pub fn rate_limited(&self) -> bool {
        self.dir == Dir::Out && matches!(self.class, "gateway-unreachable" | "remote-unreachable")
    }
}

const BOTH: &[Dir] = &[Dir::In, Dir::Out];
const IN: &[Dir] = &[Dir::In];
const OUT: &[Dir] = &[Dir::Out];

/// Every class with the directions it is generated in.
pub const CLASSES: &[(&str, &[Dir])] = &[
    ("udp", BOTH),
    ("udp-no-checksum", BOTH),
    ("tcp", BOTH),
    ("icmp-echo", BOTH),
    ("udplite", BOTH),
    ("dccp", BOTH),
    ("proto-other", BOTH),
    ("ttl-0", BOTH),
    ("ttl-1", BOTH),
    ("ttl-2", BOTH),
    ("ttl-255", BOTH),
    ("ip-options", BOTH),
    ("ip-record-route", BOTH),
    ("ip-timestamp", BOTH),
    ("frag-order", BOTH),
    ("frag-duplicate", BOTH),
    ("frag-overlap", BOTH),
    ("frag-tiny-first-udp", BOTH),
    ("frag-tiny-first-tcp", BOTH),
    ("mtu-df", BOTH),
    ("mtu-no-df", BOTH),
    ("icmp-error", BOTH),
    ("icmp-error-udplite", BOTH),
    ("remote-unreachable", OUT),
    ("gateway-unreachable", BOTH),
    ("eth-broadcast", BOTH),
    ("eth-multicast", BOTH),
    ("eth-foreign-unicast", BOTH),
    ("vlan", BOTH),
    ("vlan-priority-tag", BOTH),
    ("qinq", BOTH),
    ("bad-ip-checksum", BOTH),
    ("martian-source", IN),
    ("spoofed-floating-source", IN),
    ("spoofed-tenant-source", IN),
    ("spoofed-gateway-source", IN),
    ("unassociated-tenant-source", OUT),
    ("to-the-gateway", OUT),
    ("arp-request", IN),
    ("arp-unicast-own-mac", IN),
    ("arp-unicast-foreign-mac", IN),
    ("arp-vlan", IN),
    ("arp-qinq", IN),
    // Not a frame of its own: collects the ARP requests the gateway sends
    // during the whole run outside the ARP cases (see `run_cases`).
    (GATEWAY_ARP, OUT),
];

/// The class that collects the gateway's ARP requests: with permanent
/// neighbours everywhere, a correct gateway sends none; they have no tag
/// and come late (probes are 1 s apart), so no case could own them.
pub const GATEWAY_ARP: &str = "gateway-arp-requests";

fn pick<T: Copy>(rng: &mut Rng, v: &[T]) -> T {
    v[rng.below(v.len() as u64) as usize]
}

/// The addresses of an ordinary packet in `dir`.
#[derive(Clone, Copy)]
struct Ends {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    smac: Mac,
    dmac: Mac,
}

fn ends(dir: Dir, rng: &mut Rng) -> Ends {
    match dir {
        Dir::In => Ends {
            src: EXT,
            dst: pick(rng, &[FIP1, FIP2]),
            smac: RTR_MAC,
            dmac: GW_EXT_MAC,
        },
        Dir::Out => Ends {
            src: INST1,
            dst: EXT,
            smac: INST1_MAC,
            dmac: GW_INT_MAC,
        },
    }
}

fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.below(256) as u8).collect()
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8], cov: usize) -> u16 {
    let mut all = Vec::with_capacity(12 + cov);
    all.extend_from_slice(&src.octets());
    all.extend_from_slice(&dst.octets());
    all.extend_from_slice(&[0, proto]);
    all.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    all.extend_from_slice(&l4[..cov]);
    checksum(&all)
}

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, syn: bool, data: &[u8]) -> Vec<u8> {
    let mut t = pkt::tcp(src, dst, sport, dport, data);
    if syn {
        t[13] = 0x02;
        t[8..12].fill(0);
        t[16..18].fill(0);
        let c = pseudo_sum(src, dst, 6, &t, t.len());
        t[16..18].copy_from_slice(&c.to_be_bytes());
    }
    t
}

/// A UDP-Lite datagram (RFC 3828) covering `cov` bytes (0: all).
fn udplite(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, cov: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&cov.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let n = if cov == 0 { u.len() } else { cov as usize };
    let mut c = pseudo_sum(src, dst, 136, &u, n);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A DCCP-Request (RFC 4340 §5.1, extended sequence numbers).
fn dccp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 20];
    d[0..2].copy_from_slice(&sport.to_be_bytes());
    d[2..4].copy_from_slice(&dport.to_be_bytes());
    d[4] = 5; // data offset, in 32-bit words
    d[8] = 0x01; // type 0 (Request), X=1
    d[10..16].copy_from_slice(&[0, 0, 0, 1, 2, 3]);
    d[16..20].copy_from_slice(&42u32.to_be_bytes()); // service code
    d.extend_from_slice(data);
    let c = pseudo_sum(src, dst, 33, &d, d.len());
    d[6..8].copy_from_slice(&c.to_be_bytes());
    d
}

/// An SCTP packet from `sport` (the tag) holding one INIT chunk, with its
/// CRC32c (RFC 9260). Well-formed: conntrack marks a malformed one INVALID
/// and its NAT then leaves it untranslated, a difference from the oracle
/// that says nothing about floatip (SCTP's checksum does not cover the
/// addresses; a 1:1 NAT changes only the IP header).
fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0..2].copy_from_slice(&sport.to_be_bytes());
    d[2..4].copy_from_slice(&dport.to_be_bytes());
    // Verification tag 0, as an INIT must have.
    d[12] = 1; // INIT
    d[14..16].copy_from_slice(&20u16.to_be_bytes());
    d[16..20].copy_from_slice(&(0x1000_0000 | sport as u32).to_be_bytes()); // initiate tag
    d[20..24].copy_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    d[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    d[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    d[28..32].copy_from_slice(&(sport as u32).to_be_bytes()); // initial TSN
    let mut crc = !0u32;
    for b in &d {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    d[8..12].copy_from_slice(&(!crc).to_le_bytes());
    d
}

/// An L4 message of `proto` carrying `tag`.
fn l4(rng: &mut Rng, proto: u8, e: &Ends, tag: u16, len: usize) -> Vec<u8> {
    let data = bytes(rng, len);
    let dport = 1000 + rng.below(8000) as u16;
    match proto {
        17 => pkt::udp(e.src, e.dst, tag, dport, &data, true),
        6 => tcp(e.src, e.dst, tag, dport, rng.below(2) == 0, &data),
        1 => pkt::icmp(8, 0, [(tag >> 8) as u8, tag as u8, 0, 1], &data),
        136 => udplite(e.src, e.dst, tag, dport, pick(rng, &[0, 8, 12]), &data),
        33 => dccp(e.src, e.dst, tag, dport, &data),
        132 => sctp(tag, dport),
        _ => {
            let mut d = tag.to_be_bytes().to_vec();
            d.extend_from_slice(&data);
            d
        }
    }
}

fn ip_hdr(e: &Ends, proto: u8, tag: u16) -> Ip {
    let mut ip = Ip::new(e.src, e.dst, proto);
    ip.id = tag;
    ip
}

/// An Ethernet frame of `e` carrying `ip_packet`.
fn frame(e: &Ends, ip_packet: &[u8]) -> Vec<u8> {
    pkt::eth(e.dmac, e.smac, None, 0x0800, ip_packet)
}

/// A frame with 802.1Q/802.1ad tags inserted after the MACs.
fn tagged(f: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut g = f[..12].to_vec();
    for (tpid, tci) in tags {
        g.extend_from_slice(&tpid.to_be_bytes());
        g.extend_from_slice(&tci.to_be_bytes());
    }
    g.extend_from_slice(&f[12..]);
    g
}

fn fragments_of(ip: &Ip, payload: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 0;
    for (i, s) in sizes.iter().enumerate() {
        let end = if i + 1 == sizes.len() {
            payload.len()
        } else {
            (off + s).min(payload.len())
        };
        let mut h = ip.clone();
        h.frag = if end < payload.len() { 0x2000 } else { 0 } | (off / 8) as u16;
        out.push(h.packet(&payload[off..end]));
        off = end;
        if off >= payload.len() {
            break;
        }
    }
    out
}

fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

const PROTOS: &[u8] = &[17, 6, 1];

/// Generates case `n` of `class` in `dir`.
pub fn make(n: usize, class: &'static str, dir: Dir, rng: &mut Rng) -> Case {
    let tag = TAG_BASE + (n as u16 % (TAG_END - TAG_BASE));
    let mut e = ends(dir, rng);
    let mut what = String::new();
    let mut frames = Vec::new();
    let len = 8 + rng.below(120) as usize;
    // The protocol of classes about something else than the protocol.
    let p3 = pick(rng, PROTOS);
    let plain = |rng: &mut Rng, e: &Ends, proto: u8, what: &mut String| {
        let ip = ip_hdr(e, proto, tag);
        what.push_str(&format!("{} -> {} proto {proto}", e.src, e.dst));
        frame(e, &ip.packet(&l4(rng, proto, e, tag, len)))
    };
    match class {
        "udp" | "tcp" | "icmp-echo" | "udplite" | "dccp" => {
            let proto = match class {
                "udp" => 17,
                "tcp" => 6,
                "icmp-echo" => 1,
                "udplite" => 136,
                _ => 33,
            };
            frames.push((dir, plain(rng, &e, proto, &mut what)));
        }
        "udp-no-checksum" => {
            let ip = ip_hdr(&e, 17, tag);
            let u = pkt::udp(e.src, e.dst, tag, 53, &bytes(rng, len), false);
            what = format!("{} -> {} UDP checksum 0", e.src, e.dst);
            frames.push((dir, frame(&e, &ip.packet(&u))));
        }
        "proto-other" => {
            let proto = loop {
                let p = rng.below(256) as u8;
                if ![1, 6, 17, 33, 136].contains(&p) {
                    break p;
                }
            };
            frames.push((dir, plain(rng, &e, proto, &mut what)));
        }
        "ttl-0" | "ttl-1" | "ttl-2" | "ttl-255" => {
            let proto = pick(rng, PROTOS);
            let mut ip = ip_hdr(&e, proto, tag);
            ip.ttl = class[4..].parse().unwrap();
            what = format!("{} -> {} proto {proto} ttl {}", e.src, e.dst, ip.ttl);
            frames.push((dir, frame(&e, &ip.packet(&l4(rng, proto, &e, tag, len)))));
        }
        "ip-options" | "ip-record-route" | "ip-timestamp" => {
            let proto = pick(rng, PROTOS);
            let mut ip = ip_hdr(&e, proto, tag);
            let (name, opt): (&str, Vec<u8>) = match (class, rng.below(2)) {
                ("ip-options", 0) => ("NOP NOP NOP EOL", vec![1, 1, 1, 0]),
                ("ip-options", _) => ("router alert", vec![0x94, 4, 0, 0]),
                ("ip-record-route", _) => {
                    ("record route", vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1])
                }
                _ => ("timestamp", vec![0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            };
            ip.options = opt;
            what = format!("{} -> {} proto {proto} options: {name}", e.src, e.dst);
            frames.push((dir, frame(&e, &ip.packet(&l4(rng, proto, &e, tag, len)))));
        }
        "frag-order"
        | "frag-duplicate"
        | "frag-overlap"
        | "frag-tiny-first-udp"
        | "frag-tiny-first-tcp" => {
            let proto = match class {
                "frag-tiny-first-udp" => 17,
                "frag-tiny-first-tcp" => 6,
                _ => pick(rng, PROTOS),
            };
            let ip = ip_hdr(&e, proto, tag);
            // Longer than the largest first fragment: always two or more.
            let n = 72 + rng.below(200) as usize;
            let dgram = l4(rng, proto, &e, tag, n);
            let sizes: Vec<usize> = match class {
                "frag-tiny-first-udp" => vec![8, 64, 64, 64],
                "frag-tiny-first-tcp" => vec![pick(rng, &[8, 16]), 64, 64, 64],
                _ => {
                    // The first fragment holds the whole L4 header.
                    let c = 8 * (3 + rng.below(6) as usize);
                    vec![c; dgram.len() / c + 1]
                }
            };
            let mut fr = fragments_of(&ip, &dgram, &sizes);
            let shape = match class {
                "frag-duplicate" => {
                    let i = rng.below(fr.len() as u64) as usize;
                    fr.insert(i, fr[i].clone());
                    format!("fragment {i} twice")
                }
                "frag-overlap" => {
                    // A second copy of fragment 1 starting 8 bytes earlier,
                    // its first 8 bytes different from what they overlap.
                    let mut h = ip.clone();
                    let c = sizes[0];
                    h.frag = 0x2000 | ((c - 8) / 8) as u16;
                    let mut body = vec![0xa5; 8];
                    body.extend_from_slice(&dgram[c..(c + 16).min(dgram.len())]);
                    fr.push(h.packet(&body));
                    "overlapping second fragment".into()
                }
                _ => {
                    let order = rng.below(3);
                    match order {
                        0 => {}
                        1 => fr.reverse(),
                        _ => shuffle(rng, &mut fr),
                    }
                    ["in order", "reversed", "shuffled"][order as usize].into()
                }
            };
            what = format!(
                "{} -> {} proto {proto}, {} fragments {sizes:?}, {shape}",
                e.src,
                e.dst,
                fr.len()
            );
            for f in fr {
                frames.push((dir, frame(&e, &f)));
            }
        }
        "mtu-df" | "mtu-no-df" => {
            let proto = pick(rng, PROTOS);
            let mut ip = ip_hdr(&e, proto, tag);
            if class == "mtu-no-df" {
                ip.frag = 0;
            }
            let total = ROUTE_MTU + 1 + rng.below(100) as usize;
            let hdr = if proto == 6 { 20 } else { 8 };
            let p = ip.packet(&l4(rng, proto, &e, tag, total - 20 - hdr));
            what = format!("{} -> {} proto {proto}, {} bytes", e.src, e.dst, p.len());
            frames.push((dir, frame(&e, &p)));
        }
        "icmp-error" | "icmp-error-udplite" => {
            // First the flow the error is about (the other way), then the error.
            let back = if dir == Dir::In { Dir::Out } else { Dir::In };
            let mut f = ends(back, rng);
            if back == Dir::In {
                f.dst = FIP1;
            }
            let qproto = if class == "icmp-error-udplite" {
                136
            } else {
                pick(rng, &[17, 1])
            };
            let qip = ip_hdr(&f, qproto, tag);
            let inner = qip.packet(&l4(rng, qproto, &f, tag, len));
            frames.push((back, frame(&f, &inner)));
            // The error quotes the packet as it was seen on the far side:
            // translated by a correct NAT.
            let mut seen = inner.clone();
            let (qs, qd) = match back {
                Dir::Out => (FIP1, f.dst),
                Dir::In => (f.src, INST1),
            };
            rewrite_addrs(&mut seen, qs, qd);
            let (kind, code, rest, cut) = pick(
                rng,
                &[
                    (3u8, 1u8, [0u8; 4], false),
                    (3, 3, [0; 4], false),
                    (3, 3, [0; 4], true),
                    (3, 4, [0, 0, 0x05, 0x00], true),
                    (11, 0, [0; 4], false),
                    (11, 0, [0; 4], true),
                    (12, 0, [20, 0, 0, 0], true),
                ],
            );
            if cut {
                seen.truncate(28);
            }
            // From the far host, or from a router on the way.
            let (src, dst) = match dir {
                Dir::In => (pick(rng, &[EXT, RTR]), FIP1),
                Dir::Out => (INST1, f.src),
            };
            e.src = src;
            e.dst = dst;
            let ip = ip_hdr(&e, 1, tag);
            what = format!(
                "{src} -> {dst} ICMP {kind}/{code} quoting {qs} -> {qd} proto {qproto}{}",
                if cut { " (28 bytes)" } else { "" }
            );
            frames.push((
                dir,
                frame(&e, &ip.packet(&pkt::icmp(kind, code, rest, &seen))),
            ));
        }
        "remote-unreachable" => {
            e.dst = UNROUTED_AT_RTR;
            frames.push((dir, plain(rng, &e, p3, &mut what)));
        }
        "gateway-unreachable" => {
            if dir == Dir::In {
                e.dst = FIP3;
                // The kernel limits route errors to one per second per
                // source (net.ipv4.route.error_cost, not per namespace):
                // each inbound case gets a source of its own.
                e.src = Ipv4Addr::new(198, 51, 100, 128 + (tag % 120) as u8);
            } else {
                e.dst = UNREACHABLE_AT_GW;
            }
            frames.push((dir, plain(rng, &e, p3, &mut what)));
        }
        "eth-broadcast" | "eth-multicast" | "eth-foreign-unicast" => {
            e.dmac = match class {
                "eth-broadcast" => [0xff; 6],
                "eth-multicast" => [0x01, 0x00, 0x5e, 0x00, 0x00, 0x42],
                _ => FOREIGN_MAC,
            };
            frames.push((dir, plain(rng, &e, p3, &mut what)));
            what.push_str(&format!(" to MAC {:02x?}", e.dmac));
        }
        "vlan" | "vlan-priority-tag" | "qinq" => {
            let f = plain(rng, &e, p3, &mut what);
            let vid = 1 + rng.below(4094) as u16;
            let tags: Vec<(u16, u16)> = match class {
                "vlan" => vec![(0x8100, vid)],
                "vlan-priority-tag" => vec![(0x8100, 0x2000)],
                _ => vec![(0x88a8, vid), (0x8100, 1 + rng.below(4094) as u16)],
            };
            what.push_str(&format!(" tags {tags:04x?}"));
            frames.push((dir, tagged(&f, &tags)));
        }
        "bad-ip-checksum" => {
            let mut f = plain(rng, &e, p3, &mut what);
            f[14 + 10] ^= 1 << rng.below(8);
            what.push_str(" with a wrong header checksum");
            frames.push((dir, f));
        }
        "martian-source"
        | "spoofed-floating-source"
        | "spoofed-tenant-source"
        | "spoofed-gateway-source"
        | "unassociated-tenant-source" => {
            e.src = match class {
                "martian-source" => pick(
                    rng,
                    &[
                        Ipv4Addr::new(0, 1, 2, 3),
                        Ipv4Addr::new(127, 0, 0, 1),
                        Ipv4Addr::new(224, 0, 0, 9),
                        Ipv4Addr::new(240, 0, 0, 1),
                        Ipv4Addr::BROADCAST,
                    ],
                ),
                "spoofed-floating-source" => {
                    e.dst = FIP1;
                    pick(rng, &[FIP2, FIP3])
                }
                "spoofed-tenant-source" => pick(rng, &[INST2, INST1]),
                "spoofed-gateway-source" => pick(rng, &[GW_INT, GW_EXT]),
                _ => Ipv4Addr::new(10, 0, 0, 99),
            };
            frames.push((dir, plain(rng, &e, p3, &mut what)));
        }
        "to-the-gateway" => {
            let (dst, dmac) = pick(
                rng,
                &[
                    (GW_INT, GW_INT_MAC),
                    (GW_EXT, GW_INT_MAC),
                    (Ipv4Addr::new(10, 0, 0, 255), [0xff; 6]),
                ],
            );
            e.dst = dst;
            e.dmac = dmac;
            let proto = if dst.octets()[3] == 255 {
                17
            } else {
                pick(rng, PROTOS)
            };
            frames.push((dir, plain(rng, &e, proto, &mut what)));
        }
        GATEWAY_ARP => what = "(the ARP requests the gateway sent during the run)".into(),
        _ => {
            // ARP requests from the router for a floating IP (or the gateway's own).
            let tpa = pick(rng, &[FIP1, FIP2, GW_EXT]);
            let (dmac, tags): (Mac, Vec<(u16, u16)>) = match class {
                "arp-request" => ([0xff; 6], vec![]),
                "arp-unicast-own-mac" => (GW_EXT_MAC, vec![]),
                "arp-unicast-foreign-mac" => (FOREIGN_MAC, vec![]),
                "arp-vlan" => ([0xff; 6], vec![(0x8100, 1 + rng.below(4094) as u16)]),
                _ => ([0xff; 6], vec![(0x88a8, 7), (0x8100, 9)]),
            };
            let a = pkt::arp(dmac, RTR_MAC, 1, RTR_MAC, RTR, [0; 6], tpa);
            what = format!("ARP who-has {tpa} to {dmac:02x?} tags {tags:04x?}");
            frames.push((dir, tagged(&a, &tags)));
            return Case {
                n,
                tag,
                class,
                dir,
                what,
                frames,
            };
        }
    }
    Case {
        n,
        tag,
        class,
        dir,
        what,
        frames,
    }
}

/// Rewrites the addresses of an IPv4 packet, recomputing its header and L4
/// checksums from scratch (what a correct NAT produces).
fn rewrite_addrs(p: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[10..12].fill(0);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let proto = p[9];
    let l4 = &mut p[20..];
    let at = match proto {
        17 | 136 => 6,
        6 => 16,
        _ => return,
    };
    let cov = if proto == 136 && u16::from_be_bytes([l4[4], l4[5]]) != 0 {
        u16::from_be_bytes([l4[4], l4[5]]) as usize
    } else {
        l4.len()
    };
    l4[at..at + 2].fill(0);
    let mut c = pseudo_sum(src, dst, proto, l4, cov);
    if c == 0 && proto != 6 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// `count` cases: first every class in each of its directions (so that a
/// short run covers them all), then classes at random.
pub fn generate(seed: u64, count: usize) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    let all: Vec<(&'static str, Dir)> = CLASSES
        .iter()
        .flat_map(|(c, dirs)| dirs.iter().map(move |d| (*c, *d)))
        .collect();
    (0..count)
        .map(|n| {
            let (c, d) = if n < all.len() {
                all[n]
            } else {
                pick(&mut rng, &all)
            };
            make(n, c, d, &mut rng)
        })
        .collect()
}

/// How many (class, direction) pairs there are: the minimum useful run.
pub fn class_count() -> usize {
    CLASSES.iter().map(|(_, d)| d.len()).sum()
}
