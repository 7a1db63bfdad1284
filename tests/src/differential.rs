//! Differential test: random association tables and valid packets of every
//! shape the data plane handles, run through the real programs
//! (`BPF_PROG_TEST_RUN`, XDP and TC) and through `model`; action and output
//! bytes must be identical.

use std::net::Ipv4Addr;

use floatip::dataplane::TestProgram;

use crate::{
    fixture::*,
    model::{self, Action, Table},
    pkt::{self, Ip, MAC_A, MAC_B},
    rng::Rng,
};

fn pick<T: Copy>(rng: &mut Rng, v: &[T]) -> T {
    v[rng.below(v.len() as u64) as usize]
}

fn random_table(rng: &mut Rng) -> Table {
    let n = 1 + rng.below(8) as usize;
    let mut pairs: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
    while pairs.len() < n {
        let f = Ipv4Addr::new(203, 0, 113, 10 + rng.below(20) as u8);
        let x = Ipv4Addr::new(10, 0, rng.below(2) as u8, 2 + rng.below(30) as u8);
        if pairs.iter().all(|p| p.0 != f && p.1 != x) {
            pairs.push((f, x));
        }
    }
    Table {
        pairs,
        pool: (Ipv4Addr::new(203, 0, 113, 0), 24),
        excluded: vec![ROUTER],
    }
}

/// An address of a random kind: associated floating/fixed, unassociated
/// pool address, the excluded router, an outside or an unassociated tenant
/// host, now and then a martian one.
fn any_addr(rng: &mut Rng, t: &Table) -> Ipv4Addr {
    if rng.below(20) == 0 {
        return pick(
            rng,
            &[
                Ipv4Addr::new(0, 0, 0, 0),
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(224, 0, 0, 5),
                Ipv4Addr::new(240, 1, 2, 3),
                Ipv4Addr::new(255, 255, 255, 255),
            ],
        );
    }
    let p = pick(rng, &t.pairs);
    match rng.below(6) {
        0 => p.0,
        1 => p.1,
        2 => Ipv4Addr::new(203, 0, 113, 40 + rng.below(10) as u8),
        3 => ROUTER,
        4 => Ipv4Addr::new(198, 51, 100, 1 + rng.below(9) as u8),
        _ => Ipv4Addr::new(10, 0, 9, 1 + rng.below(9) as u8),
    }
}

/// Now and then, what a bridge floods or a broken link delivers: another
/// destination MAC, or a wrong IPv4 header checksum.
fn damage(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(16) {
        0 => f[..6].copy_from_slice(&pick(
            rng,
            &[
                [0xff; 6],
                [0x01, 0, 0x5e, 0, 0, 1],
                [0x02, 0, 0, 0, 0, 0x0c],
            ],
        )),
        1 => {
            let l3 = if f[12..14] == [0x81, 0x00] { 18 } else { 14 };
            if f[l3 - 2..l3] == [0x08, 0x00] {
                f[l3 + 10] ^= 1 << rng.below(8);
            }
        }
        _ => {}
    }
    f
}

/// A valid frame from `src` to `dst` of a random shape.
fn random_frame(rng: &mut Rng, t: &Table, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let data: Vec<u8> = (0..rng.below(80)).map(|_| rng.below(256) as u8).collect();
    let mut ip = Ip::new(src, dst, 17);
    ip.ttl = pick(rng, &[1, 2, 64, 255]);
    ip.options = match rng.below(4) {
        0 => vec![1, 1, 1, 0],
        1 => vec![0x94, 4, 0, 0, 1, 1, 1, 0],
        _ => vec![],
    };
    let vlan = (rng.below(4) == 0).then(|| rng.below(4095) as u16);
    let wrap = |ip_packet: Vec<u8>| pkt::eth(MAC_A, MAC_B, vlan, 0x0800, &ip_packet);
    match rng.below(12) {
        0 => wrap(ip.packet(&pkt::udp(src, dst, 1000, 53, &data, true))),
        1 => wrap(ip.packet(&pkt::udp(src, dst, 1000, 53, &data, false))),
        2 => {
            ip.proto = 6;
            wrap(ip.packet(&pkt::tcp(src, dst, 1000, 80, &data)))
        }
        3 => {
            ip.proto = 1;
            wrap(ip.packet(&pkt::icmp(pick(rng, &[0, 8]), 0, [0, 1, 0, 2], &data)))
        }
        4 | 5 => {
            // An ICMP error quoting a datagram that usually went the other way.
            ip.proto = 1;
            let (qs, qd) = if rng.below(4) == 0 {
                (any_addr(rng, t), any_addr(rng, t))
            } else {
                (dst, src)
            };
            let mut qip = Ip::new(qs, qd, pick(rng, &[17, 6, 1]));
            qip.ttl = 1;
            let inner = match qip.proto {
                17 => pkt::udp(qs, qd, 33434, 33435, &data, rng.below(4) != 0),
                6 => pkt::tcp(qs, qd, 1000, 80, &data),
                _ => pkt::icmp(8, 0, [0, 1, 0, 1], &data),
            };
            let mut quote = qip.packet(&inner);
            if rng.below(2) == 0 {
                quote.truncate(28);
            }
            let (kind, code) = pick(rng, &[(3u8, 3u8), (3, 4), (3, 1), (11, 0), (12, 0)]);
            wrap(ip.packet(&pkt::icmp(kind, code, [0; 4], &quote)))
        }
        6 | 7 => {
            let mut d = vec![0u8; 64];
            d.extend_from_slice(&data);
            let dgram = pkt::udp(src, dst, 1000, 53, &d, true);
            let frags = pkt::fragments(&ip, &dgram, 32);
            wrap(
                frags[if rng.below(2) == 0 {
                    0
                } else {
                    frags.len() - 1
                }]
                .clone(),
            )
        }
        8 => {
            ip.proto = pick(rng, &[136, 33]);
            wrap(ip.packet(&match ip.proto {
                136 => pkt::udplite(src, dst, 1000, 5004, &data),
                _ => pkt::dccp(src, dst, 1000, 5001, &data),
            }))
        }
        9 | 10 => {
            // A TCP segment cut into small fragments: the checksum may be
            // in any of them.
            ip.proto = 6;
            let seg = pkt::tcp(src, dst, 1000, 80, &data);
            let frags = pkt::fragments(&ip, &seg, 8 * (1 + rng.below(3) as usize));
            wrap(frags[rng.below(frags.len().min(4) as u64) as usize].clone())
        }
        _ => {
            let m = [0x02, 0, 0, 0, 0, 0x77];
            let mut f = pkt::arp([0xff; 6], m, pick(rng, &[1, 1, 2]), m, src, [0; 6], dst);
            if let Some(tci) = vlan {
                let mut g = f[..12].to_vec();
                g.extend_from_slice(&[0x81, 0x00]);
                g.extend_from_slice(&tci.to_be_bytes());
                g.extend_from_slice(&f[12..]);
                f = g;
            }
            f
        }
    }
}

/// Runs `cases` random cases; panics with the case on the first mismatch.
pub fn run(cases: u64, seed: u64) -> u64 {
    let mut fx = Fixture::with(&[]);
    let mut dp = fx.progs().dataplane().unwrap();
    let mut rng = Rng::new(seed);
    let mut table = Table {
        pairs: vec![],
        pool: (Ipv4Addr::new(203, 0, 113, 0), 24),
        excluded: vec![ROUTER],
    };
    let mut translated = 0;
    for n in 0..cases {
        if n % 50 == 0 {
            for (f, _) in &table.pairs {
                dp.nat_del(*f).unwrap();
            }
            table = random_table(&mut rng);
            for (f, x) in &table.pairs {
                dp.nat_add(*f, *x).unwrap();
            }
        }
        let src = any_addr(&mut rng, &table);
        // Floating IPs as destinations a little more often: since sources
        // in the pool are dropped towards them, fewer cases translate.
        let dst = if rng.below(5) == 0 {
            pick(&mut rng, &table.pairs).0
        } else {
            any_addr(&mut rng, &table)
        };
        let frame = random_frame(&mut rng, &table, src, dst);
        let frame = damage(&mut rng, frame);
        let external = rng.below(2) == 0;
        let (want_action, want) = if external {
            model::external(&frame, &table, MAC_A)
        } else {
            model::internal(&frame, &table, MAC_A)
        };
        if want != frame {
            translated += 1;
        }
        let progs = if external {
            [TestProgram::XdpExternal, TestProgram::TcExternal]
        } else {
            [TestProgram::XdpInternal, TestProgram::TcInternal]
        };
        for prog in progs {
            let (action, out) = fx.run(prog, &frame);
            let got = match (is_tc(prog), action) {
                (false, XDP_PASS) | (true, TC_ACT_OK) => Action::Pass,
                (false, XDP_DROP) | (true, TC_ACT_SHOT) => Action::Drop,
                (false, XDP_REDIRECT) | (true, TC_ACT_REDIRECT) => Action::Reply,
                _ => panic!("case {n} (seed {seed}): {prog:?} returned {action}"),
            };
            let show = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            assert_eq!(
                (got, show(&out)),
                (want_action, show(&want)),
                "case {n} (seed {seed}) {prog:?} table {:?}\ninput {}",
                table.pairs,
                show(&frame)
            );
        }
    }
    translated
}
