//! The benchmark's own programs (`floatip-ebpf/src/bin/bench.rs`), run with
//! `BPF_PROG_TEST_RUN` and compared byte for byte with frames built
//! independently (`tests::pkt`): the generator must send exactly the
//! frames it promises whatever a device under test left in a recycled page,
//! the minimal NAT must translate like a NAT, and the sink must keep what it
//! saw. The benchmark's figures are only as good as these programs.

use std::net::Ipv4Addr;

use floatip::dataplane::bench::{
    BenchObject, FRAME_LEN, GenSpec, MinNatEntry, XDP_PASS, XDP_REDIRECT, XDP_TX, pin_thread,
};
use floatip_common::{SINK_SAMPLE_SHIFT, SINK_SAMPLE_SLOTS, programs};
use tests::{
    pkt::{self, Ip},
    rng::Rng,
};

const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const LO: u32 = 1;

/// Runs each test in a network namespace of its own thread (loopback, the
/// ingress of the test runs, is all it needs).
fn own_netns() {
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!(
            "cannot make a network namespace (run as root): {}",
            std::io::Error::last_os_error()
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 64-byte UDP frame as the generator promises it, built from scratch.
fn udp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
) -> Vec<u8> {
    let mut ip = Ip::new(src, dst, 17);
    ip.ttl = ttl;
    ip.id = 0;
    let udp = pkt::udp(src, dst, sport, dport, &[0; FRAME_LEN - 42], true);
    pkt::eth(macs.0, macs.1, None, 0x0800, &ip.packet(&udp))
}

fn spec() -> GenSpec {
    GenSpec {
        dst_mac: GW_MAC,
        src_mac: GEN_MAC,
        src_ip: Ipv4Addr::new(10, 0, 0, 250),
        src_count: 5,
        dst_ip: Ipv4Addr::new(203, 0, 113, 10),
        dst_count: 7,
        dst_offset: 3,
        sport: 65_530,
        flows: 9,
        dport: 9,
        action: XDP_TX,
    }
}

/// What a device under test may leave in a page that comes back: the frame
/// translated and forwarded (other MACs, destination and TTL, checksums
/// updated), or any bytes at all where the generator writes.
fn poison(frame: &[u8], how: u64, rng: &mut Rng) -> Vec<u8> {
    let mut f = frame.to_vec();
    match how % 3 {
        0 => {}
        1 => {
            let dst = Ipv4Addr::new(10, 0, 0, 11);
            let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
            let sport = u16::from_be_bytes([f[34], f[35]]);
            f = udp_frame((SINK_MAC, GW_MAC), src, dst, sport, 9, 63);
        }
        _ => {
            for i in (0..12).chain(22..36).chain(40..42) {
                f[i] = rng.next_u64() as u8;
            }
        }
    }
    f
}

/// Frame `n` of `spec` with pair index `p`, as the generator documents it.
fn nth(s: &GenSpec, n: u64, p: u32) -> Vec<u8> {
    let src = u32::from(s.src_ip) + if s.src_count > 1 { p % s.src_count } else { 0 };
    let pd = if s.dst_count > 1 { p % s.dst_count } else { 0 };
    let dst = u32::from(s.dst_ip) + (pd + s.dst_offset) % s.dst_count;
    let sport = s.sport.wrapping_add((n % u64::from(s.flows)) as u16);
    udp_frame(
        (s.dst_mac, s.src_mac),
        Ipv4Addr::from(src),
        Ipv4Addr::from(dst),
        sport,
        s.dport,
        64,
    )
}

/// Frame after frame, each test run starting from what the last one left
/// (or a translated or garbled version of it, as a recycled page may hold).
fn check_sequence(g: &mut BenchObject, s: &GenSpec, table: Option<&[u32]>, frames: u64) {
    let mut rng = Rng::new(13);
    let mut page = s.template().to_vec();
    assert_eq!(hex(&page), hex(&nth(s, 0, 0)), "the template is frame 0");
    for n in 0..frames {
        let input = poison(&page, n, &mut rng);
        let (action, out) = g
            .test_run_once(programs::BENCH_GEN, LO, &input)
            .expect("test run");
        assert_eq!(action, XDP_TX, "frame {n}: action");
        let p = match table {
            Some(t) => t[n as usize % t.len()],
            None => n as u32,
        };
        let want = nth(s, n, p);
        assert_eq!(hex(&out), hex(&want), "frame {n} (input {})", hex(&input));
        pkt::verify(&out).unwrap_or_else(|e| panic!("frame {n}: {e}"));
        page = out;
    }
}

#[test]
fn generator_writes_each_frame_exactly_whatever_the_page_held() {
    own_netns();
    let mut g = BenchObject::load().expect("load");
    let s = spec();
    g.set_gen(&s, false).expect("config");
    // Past every wrap: 5 sources, 7 destinations, 9 ports, port 65535 → 0.
    check_sequence(&mut g, &s, None, 5 * 7 * 9 + 3);
    // A new config starts the sequence over.
    let one = GenSpec {
        src_count: 1,
        dst_count: 1,
        dst_offset: 0,
        flows: 1,
        ..s
    };
    g.set_gen(&one, false).expect("config");
    check_sequence(&mut g, &one, None, 4);
}

#[test]
fn generator_draws_pairs_from_the_table() {
    own_netns();
    let mut g = BenchObject::load_sized(8, 0).expect("load");
    let table = [4, 0, 6, 6, 1, 5, 2, 3];
    g.set_zipf(&table).expect("table");
    // Hairpin-like: the same pair index picks the source and (offset) the destination.
    let s = GenSpec {
        src_count: 7,
        ..spec()
    };
    g.set_gen(&s, true).expect("config");
    check_sequence(&mut g, &s, Some(&table), 20);
    // Destinations only (one source).
    let d = GenSpec {
        src_count: 1,
        dst_offset: 0,
        ..s
    };
    g.set_gen(&d, true).expect("config");
    check_sequence(&mut g, &d, Some(&table), 9);
    assert!(g.set_zipf(&[0; 4]).is_err(), "a table of another size");
}

#[test]
fn generator_refuses_what_it_cannot_send() {
    let bad = [
        GenSpec { flows: 0, ..spec() },
        GenSpec {
            dst_offset: 7,
            ..spec()
        },
    ];
    for s in bad {
        assert!(s.config(0).is_err(), "{s:?}");
    }
}

#[test]
fn minimal_nat_translates_like_a_nat() {
    own_netns();
    let mut g = BenchObject::load().expect("load");
    let (fip, fixed, remote) = (
        Ipv4Addr::new(203, 0, 113, 10),
        Ipv4Addr::new(10, 0, 0, 11),
        Ipv4Addr::new(198, 51, 100, 2),
    );
    let entry = MinNatEntry {
        dst_mac: SINK_MAC,
        src_mac: GW_MAC,
        addr: u32::from_ne_bytes(fixed.octets()),
        ifindex: LO,
    };
    g.add_min_nat(&[(fip, entry)]).expect("entries");
    let run = |g: &mut BenchObject, input: &[u8]| {
        g.test_run_once(programs::BENCH_MIN_NAT, LO, input)
            .expect("test run")
    };
    // A frame to the floating IP, and the frame the NAT must make of it.
    let pair = |proto: u8, l4: &dyn Fn(Ipv4Addr) -> Vec<u8>| {
        let mut ip = Ip::new(remote, fip, proto);
        let input = pkt::eth(GW_MAC, GEN_MAC, None, 0x0800, &ip.packet(&l4(fip)));
        ip.dst = fixed;
        let output = pkt::eth(SINK_MAC, GW_MAC, None, 0x0800, &ip.packet(&l4(fixed)));
        (input, output)
    };
    let cases = [
        (
            "UDP",
            pair(17, &|d| pkt::udp(remote, d, 1234, 53, b"query", true)),
        ),
        (
            "TCP",
            pair(6, &|d| pkt::tcp(remote, d, 40_000, 443, b"hello")),
        ),
        // Without a checksum, and stays without.
        (
            "bare UDP",
            pair(17, &|d| pkt::udp(remote, d, 1234, 53, b"x", false)),
        ),
    ];
    for (what, (input, want)) in cases {
        let (action, out) = run(&mut g, &input);
        assert_eq!(action, XDP_REDIRECT, "{what}");
        assert_eq!(hex(&out), hex(&want), "{what}");
        pkt::verify(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    // Not its business: untouched.
    let other = pkt::eth(
        GW_MAC,
        GEN_MAC,
        None,
        0x0800,
        &Ip::new(remote, remote, 17).packet(&pkt::udp(remote, remote, 1, 2, b"", true)),
    );
    let arp = pkt::arp(GW_MAC, GEN_MAC, 1, GEN_MAC, remote, [0; 6], fip);
    for input in [other, arp] {
        let (action, out) = run(&mut g, &input);
        assert_eq!(action, XDP_PASS);
        assert_eq!(hex(&out), hex(&input));
    }
}

#[test]
fn sink_keeps_every_4096th_frame() {
    own_netns();
    // The sink counts per CPU: one CPU for the whole test.
    std::thread::spawn(|| {
        own_netns();
        pin_thread(0).expect("pin");
        let mut g = BenchObject::load().expect("load");
        let s = spec();
        let frame = |n: u64| nth(&s, n, n as u32);
        let every = 1u64 << SINK_SAMPLE_SHIFT;
        let count = every * u64::from(SINK_SAMPLE_SLOTS + 1) + 1;
        for n in 0..count {
            let (action, _) = g
                .test_run_once(programs::BENCH_DROP, LO, &frame(n))
                .expect("test run");
            assert_eq!(action, floatip::dataplane::bench::XDP_DROP);
        }
        assert_eq!(g.sink_count().unwrap(), count);
        // Frames 0, every, …, (SLOTS + 1) × every were kept; the slots are
        // reused, so the last SLOTS of them remain.
        let mut got: Vec<String> = g.samples().unwrap().iter().map(|(_, f)| hex(f)).collect();
        let mut want: Vec<String> = (2..=u64::from(SINK_SAMPLE_SLOTS) + 1)
            .map(|k| hex(&frame(k * every)))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert!(g.samples().unwrap().iter().all(|(len, _)| *len == 60));
        g.clear_samples().unwrap();
        assert!(g.samples().unwrap().is_empty());
    })
    .join()
    .unwrap();
}
