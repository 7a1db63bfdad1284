//! Malformed-frame fuzzing of the real programs: frames built from valid
//! seeds by truncation, bit flips and header surgery, plus random bytes.
//! Every frame goes through all four programs; the requirements:
//! - the action is one a data plane may return (never XDP_ABORTED);
//! - a frame that comes out changed had its checksums valid after exactly
//!   when they were valid before (`pkt::verify`);
//! - a frame that comes out unchanged is bit-identical (trivially checked).

use floatip::dataplane::TestProgram;

use crate::{
    fixture::*,
    pkt::{self, Ip, MAC_A, MAC_B},
    rng::Rng,
};

/// Valid frames of every shape the data plane handles.
pub fn seeds() -> Vec<Vec<u8>> {
    let p = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 13 + 1) as u8).collect() };
    let udp = |s, d| Ip::new(s, d, 17).packet(&pkt::udp(s, d, 4000, 53, &p(30), true));
    let quote = |s, d| {
        let mut q = udp(s, d);
        q.truncate(28);
        q
    };
    let err = |s, d, q: Vec<u8>| Ip::new(s, d, 1).packet(&pkt::icmp(3, 3, [0; 4], &q));
    let e = |ip: Vec<u8>| pkt::eth(MAC_A, MAC_B, None, 0x0800, &ip);
    let mut opts = Ip::new(REMOTE, FIP1, 6);
    opts.options = vec![1, 1, 1, 0];
    vec![
        e(udp(REMOTE, FIP1)),
        e(udp(FIXED1, REMOTE)),
        e(udp(FIXED1, FIP2)),
        e(Ip::new(REMOTE, FIP1, 6).packet(&pkt::tcp(REMOTE, FIP1, 1, 2, &p(20)))),
        e(opts.packet(&pkt::tcp(REMOTE, FIP1, 1, 2, &p(3)))),
        e(Ip::new(FIXED1, REMOTE, 1).packet(&pkt::icmp(8, 0, [0, 1, 0, 2], &p(16)))),
        e(err(ROUTER, FIP1, quote(FIP1, REMOTE))),
        e(err(ROUTER, FIP1, udp(FIP1, REMOTE))),
        e(err(FIXED1, REMOTE, quote(REMOTE, FIXED1))),
        // An ICMP error quoting an ICMP error.
        e(err(ROUTER, FIP1, err(FIP1, REMOTE, quote(REMOTE, FIP1)))),
        pkt::eth(MAC_A, MAC_B, Some(7), 0x0800, &udp(REMOTE, FIP1)),
        pkt::fragments(
            &Ip::new(REMOTE, FIP1, 17),
            &pkt::udp(REMOTE, FIP1, 1, 2, &p(100), true),
            48,
        )
        .into_iter()
        .map(e)
        .nth(1)
        .unwrap(),
        pkt::arp([0xff; 6], MAC_B, 1, MAC_B, ROUTER, [0; 6], FIP1),
    ]
}

/// One mutated frame derived from `seed`.
pub fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    let l3 = if f.len() > 17 && f[12] == 0x81 {
        18
    } else {
        14
    };
    match rng.below(9) {
        0 => f.truncate(rng.below(f.len() as u64 + 1) as usize),
        1 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
        }
        // IHL below 5 or beyond the frame.
        2 if f.len() > l3 => f[l3] = (f[l3] & 0xf0) | rng.below(16) as u8,
        // Total length larger or smaller than the frame.
        3 if f.len() > l3 + 4 => {
            let v = rng.below(f.len() as u64 * 2) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&v.to_be_bytes());
        }
        // Stacked VLAN tags.
        4 if f.len() > 14 => {
            let mut g = f[..12].to_vec();
            g.extend_from_slice(&[0x81, 0x00, 0, 5, 0x81, 0x00, 0, 6]);
            g.extend_from_slice(&f[12..]);
            f = g;
        }
        // ARP with wrong lengths.
        5 if f.len() > 20 && f[12] == 0x08 && f[13] == 0x06 => {
            f[18] = rng.below(256) as u8;
            f[19] = rng.below(256) as u8;
        }
        // Cut inside the L4 header or the ICMP quote.
        6 if f.len() > l3 + 20 => f.truncate(l3 + 20 + rng.below(36) as usize),
        7 => {
            let n = rng.below(200) as usize;
            f = (0..n).map(|_| rng.below(256) as u8).collect();
            if n > 14 && rng.below(2) == 0 {
                f[12..14].copy_from_slice(&[0x08, 0x00]);
            }
        }
        _ => {
            let i = rng.below(f.len() as u64 + 1) as usize;
            f.insert(i.min(f.len()), rng.below(256) as u8);
        }
    }
    f
}

/// What a fuzz run saw, so a test can tell it exercised something.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: u64,
    pub changed: u64,
    pub dropped: u64,
    pub refused: u64,
}

/// Runs `frames` mutated frames through every program; panics with the
/// frame in hex on the first violation.
pub fn run(frames: u64, seed: u64) -> Summary {
    let mut sum = Summary::default();
    let mut fx = Fixture::with(&[(FIP1, FIXED1), (FIP2, FIXED2)]);
    let seeds = seeds();
    let mut rng = Rng::new(seed);
    for n in 0..frames {
        let base = &seeds[rng.below(seeds.len() as u64) as usize];
        let frame = mutate(&mut rng, base);
        // The kernel refuses test runs on frames shorter than an Ethernet header.
        if frame.len() < 14 {
            continue;
        }
        for prog in ALL {
            check(&mut fx, prog, &frame, n, seed, &mut sum);
        }
    }
    sum
}

fn check(fx: &mut Fixture, prog: TestProgram, frame: &[u8], n: u64, seed: u64, sum: &mut Summary) {
    let (action, out) = match fx.try_run(prog, frame) {
        Ok(r) => r,
        // The kernel builds an skb for TC test runs and refuses frames
        // whose announced IPv4 header it cannot pull: the program never ran.
        Err(e) if is_tc(prog) && format!("{e:#}").contains("os error 22") => {
            sum.refused += 1;
            return;
        }
        Err(e) => panic!("{e:#} for {prog:?} frame {}", hexs(frame)),
    };
    let allowed: &[u32] = if is_tc(prog) {
        &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT]
    } else {
        &[XDP_PASS, XDP_DROP, XDP_TX, XDP_REDIRECT]
    };
    let ctx = || format!("{prog:?} frame #{n} (seed {seed}): {}", hexs(frame));
    assert!(allowed.contains(&action), "action {action} for {}", ctx());
    let dropped = if is_tc(prog) {
        action == TC_ACT_SHOT
    } else {
        action == XDP_DROP
    };
    sum.runs += 1;
    sum.dropped += dropped as u64;
    sum.changed += (out != frame && !dropped) as u64;
    if out != frame && !dropped {
        let before = pkt::verify(frame).is_ok();
        let after = pkt::verify(&out).is_ok();
        assert_eq!(before, after, "checksum validity changed for {}", ctx());
    }
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
