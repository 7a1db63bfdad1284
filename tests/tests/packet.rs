//! Packet tests: every rule of the data plane, driven through the real
//! programs with `BPF_PROG_TEST_RUN`, each with a crafted input and the exact
//! expected output built independently (`tests::pkt`), in XDP and TC form.
//!
//! `BPF_PROG_TEST_RUN` runs in the fixture's private network namespace with
//! the loopback device as ingress; its FIB has a route but no neighbour
//! towards the test addresses, so a translated packet comes back as "pass
//! to the kernel" with its TTL untouched, and it holds the gateway's own
//! addresses (see `Fixture`). Forwarding itself is covered by the namespace
//! tests.

use std::{net::Ipv4Addr, time::Duration};

use floatip::dataplane::{Counters, TestProgram};
use tests::{
    fixture::*,
    pkt::{self, Ip, MAC_A, MAC_B},
};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Side {
    External,
    Internal,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Pass,
    Drop,
    Reply,
}

/// Runs `input` through the side's XDP and TC programs and checks the
/// action and the exact output bytes (and, when the program rewrote the
/// frame, that the output's checksums hold).
fn check(side: Side, input: &[u8], expect: Expect, output: &[u8]) {
    // One fixture per test (thread) for all its checks: loading the
    // programs is what costs (the verifier), and checks change no map.
    thread_local! {
        static FX: std::cell::RefCell<Option<Fixture>> = const { std::cell::RefCell::new(None) };
    }
    FX.with_borrow_mut(|fx| {
        check_with(
            fx.get_or_insert_with(Fixture::new),
            side,
            input,
            expect,
            output,
        )
    });
}

fn check_with(fx: &mut Fixture, side: Side, input: &[u8], expect: Expect, output: &[u8]) {
    for tc in [false, true] {
        let prog = match (side, tc) {
            (Side::External, false) => TestProgram::XdpExternal,
            (Side::Internal, false) => TestProgram::XdpInternal,
            (Side::External, true) => TestProgram::TcExternal,
            (Side::Internal, true) => TestProgram::TcInternal,
        };
        let want = match (expect, tc) {
            (Expect::Pass, false) => XDP_PASS,
            (Expect::Drop, false) => XDP_DROP,
            // Replies leave by a redirect to the NIC they came in on (see floatip-ebpf main.rs).
            (Expect::Reply, false) => XDP_REDIRECT,
            (Expect::Pass, true) => TC_ACT_OK,
            (Expect::Drop, true) => TC_ACT_SHOT,
            (Expect::Reply, true) => TC_ACT_REDIRECT,
        };
        let (action, out) = fx.run(prog, input);
        assert_eq!(action, want, "{prog:?}: action");
        if expect != Expect::Drop {
            assert_eq!(hex(&out), hex(output), "{prog:?}: output bytes");
            if out != input {
                pkt::verify(&out).unwrap_or_else(|e| panic!("{prog:?}: {e}"));
            }
        }
    }
}

/// Checks that the side's programs hand `input` to the kernel untouched.
fn check_untouched(side: Side, input: &[u8]) {
    check(side, input, Expect::Pass, input);
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// A frame from `src` to `dst` carrying `proto` built by `l4(src, dst)`.
fn frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: impl Fn(Ipv4Addr, Ipv4Addr) -> Vec<u8>,
) -> Vec<u8> {
    pkt::ipv4_frame(&Ip::new(src, dst, proto), &l4(src, dst))
}

fn udp_l4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    pkt::udp(src, dst, 40000, 53, &payload(37), true)
}

fn tcp_l4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    pkt::tcp(src, dst, 40000, 80, &payload(100))
}

fn echo_l4(_: Ipv4Addr, _: Ipv4Addr) -> Vec<u8> {
    pkt::icmp(8, 0, [0, 1, 0, 1], &payload(56))
}

#[test]
fn dnat_udp() {
    check(
        Side::External,
        &frame(REMOTE, FIP1, 17, udp_l4),
        Expect::Pass,
        &frame(REMOTE, FIXED1, 17, udp_l4),
    );
}

#[test]
fn dnat_tcp() {
    check(
        Side::External,
        &frame(REMOTE, FIP1, 6, tcp_l4),
        Expect::Pass,
        &frame(REMOTE, FIXED1, 6, tcp_l4),
    );
}

#[test]
fn dnat_udp_without_checksum_keeps_zero() {
    let l4 = |s, d| pkt::udp(s, d, 40000, 53, &payload(20), false);
    let out = frame(REMOTE, FIXED1, 17, l4);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    check(
        Side::External,
        &frame(REMOTE, FIP1, 17, l4),
        Expect::Pass,
        &out,
    );
}

#[test]
fn dnat_icmp_echo() {
    check(
        Side::External,
        &frame(REMOTE, FIP1, 1, echo_l4),
        Expect::Pass,
        &frame(REMOTE, FIXED1, 1, echo_l4),
    );
}

#[test]
fn snat_udp_tcp_icmp() {
    for (proto, l4) in [
        (17u8, udp_l4 as fn(Ipv4Addr, Ipv4Addr) -> Vec<u8>),
        (6, tcp_l4),
        (1, echo_l4),
    ] {
        check(
            Side::Internal,
            &frame(FIXED1, REMOTE, proto, l4),
            Expect::Pass,
            &frame(FIP1, REMOTE, proto, l4),
        );
    }
}

#[test]
fn hairpin_rewrites_both_addresses() {
    for (proto, l4) in [
        (17u8, udp_l4 as fn(Ipv4Addr, Ipv4Addr) -> Vec<u8>),
        (6, tcp_l4),
    ] {
        check(
            Side::Internal,
            &frame(FIXED1, FIP2, proto, l4),
            Expect::Pass,
            &frame(FIP1, FIXED2, proto, l4),
        );
    }
}

/// The datagram an ICMP error quotes, truncated to `quote_len` bytes.
fn quoted_udp(src: Ipv4Addr, dst: Ipv4Addr, quote_len: usize) -> Vec<u8> {
    let mut ip = Ip::new(src, dst, 17);
    ip.ttl = 1;
    let mut d = ip.packet(&pkt::udp(src, dst, 33434, 33435, &payload(32), true));
    d.truncate(quote_len);
    d
}

fn icmp_error_frame(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8, quote: &[u8]) -> Vec<u8> {
    pkt::ipv4_frame(&Ip::new(src, dst, 1), &pkt::icmp(kind, code, [0; 4], quote))
}

/// An ICMP error the gateway's own kernel sends out of an external NIC about
/// a packet floatip translated inbound (host unreachable: the instance did
/// not answer ARP) quotes the fixed IP; the egress program gives the quote
/// its floating IP back (header, quoted UDP checksum, ICMP checksum), so
/// the sender's socket matches it. Other errors and other ICMP leave as
/// they are.
#[test]
fn kernel_errors_leaving_get_the_floating_ip_back_in_their_quote() {
    let mut fx = Fixture::new();
    let gw = Ipv4Addr::new(203, 0, 113, 2);
    let quoted = |d: Ipv4Addr, len: usize| {
        Ip::new(REMOTE, d, 17).packet(&pkt::udp(REMOTE, d, 40000, 53, &payload(len), true))
    };
    for len in [12, 501] {
        let sent = icmp_error_frame(gw, REMOTE, 3, 1, &quoted(FIXED1, len));
        let want = icmp_error_frame(gw, REMOTE, 3, 1, &quoted(FIP1, len));
        let (action, out) = fx.run(TestProgram::TcEgress, &sent);
        assert_eq!(
            (action, hex(&out)),
            (TC_ACT_OK, hex(&want)),
            "quote of {len}"
        );
        pkt::verify(&out).unwrap();
    }
    let other = Ipv4Addr::new(10, 0, 0, 99);
    for untouched in [
        icmp_error_frame(gw, REMOTE, 3, 1, &quoted(other, 12)),
        icmp_error_frame(gw, REMOTE, 3, 1, &quoted(FIP1, 12)),
        frame(gw, REMOTE, 1, |_, _| {
            pkt::icmp(8, 0, [0, 1, 0, 1], &quoted(FIXED1, 12))
        }),
        frame(FIP1, REMOTE, 17, udp_l4),
    ] {
        let (action, out) = fx.run(TestProgram::TcEgress, &untouched);
        assert_eq!((action, hex(&out)), (TC_ACT_OK, hex(&untouched)));
    }
    let c = fx.progs().dataplane().unwrap().outcomes().unwrap();
    assert_eq!(c["quotes_restored"], 2, "{c:?}");
}

#[test]
fn icmp_error_arriving_for_floating_ip_translates_the_quote() {
    // Time exceeded (traceroute) with the whole datagram quoted, and a
    // fragmentation-needed error quoting only IP header + 8 bytes.
    for (kind, code, len) in [
        (11u8, 0u8, 1000usize),
        (3, 4, 28),
        (3, 3, 28),
        (12, 0, 1000),
    ] {
        let input = icmp_error_frame(ROUTER, FIP1, kind, code, &quoted_udp(FIP1, REMOTE, len));
        let output = icmp_error_frame(ROUTER, FIXED1, kind, code, &quoted_udp(FIXED1, REMOTE, len));
        check(Side::External, &input, Expect::Pass, &output);
    }
}

#[test]
fn icmp_error_sent_by_instance_translates_the_quote() {
    for len in [1000usize, 28] {
        let input = icmp_error_frame(FIXED1, REMOTE, 3, 3, &quoted_udp(REMOTE, FIXED1, len));
        let output = icmp_error_frame(FIP1, REMOTE, 3, 3, &quoted_udp(REMOTE, FIP1, len));
        check(Side::Internal, &input, Expect::Pass, &output);
    }
}

#[test]
fn icmp_error_quoting_tcp_fixes_the_quoted_tcp_checksum() {
    let quote =
        |s: Ipv4Addr, d: Ipv4Addr| Ip::new(s, d, 6).packet(&pkt::tcp(s, d, 40000, 80, &payload(8)));
    let input = icmp_error_frame(ROUTER, FIP1, 3, 1, &quote(FIP1, REMOTE));
    let output = icmp_error_frame(ROUTER, FIXED1, 3, 1, &quote(FIXED1, REMOTE));
    check(Side::External, &input, Expect::Pass, &output);
}

#[test]
fn fragments_are_each_translated() {
    let data = pkt::udp(REMOTE, FIP1, 40000, 53, &payload(3000), true);
    let translated = pkt::udp(REMOTE, FIXED1, 40000, 53, &payload(3000), true);
    let ins = pkt::fragments(&Ip::new(REMOTE, FIP1, 17), &data, 1480);
    let outs = pkt::fragments(&Ip::new(REMOTE, FIXED1, 17), &translated, 1480);
    assert_eq!(ins.len(), 3);
    for (i, o) in ins.iter().zip(&outs) {
        let fi = pkt::eth(MAC_A, MAC_B, None, 0x0800, i);
        let fo = pkt::eth(MAC_A, MAC_B, None, 0x0800, o);
        check(Side::External, &fi, Expect::Pass, &fo);
    }
}

#[test]
fn ip_options_are_skipped() {
    let with_opts = |s: Ipv4Addr, d: Ipv4Addr| {
        let mut ip = Ip::new(s, d, 17);
        // Router alert + NOP padding: IHL 6 then 7.
        ip.options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];
        pkt::ipv4_frame(&ip, &udp_l4(s, d))
    };
    check(
        Side::External,
        &with_opts(REMOTE, FIP1),
        Expect::Pass,
        &with_opts(REMOTE, FIXED1),
    );
    check(
        Side::Internal,
        &with_opts(FIXED1, REMOTE),
        Expect::Pass,
        &with_opts(FIP1, REMOTE),
    );
}

/// A datagram with IP options is translated but left to the kernel's
/// forwarding even when its next hop is cached: the kernel does a router's
/// option processing (Record Route and Timestamp entries), which a redirect
/// would skip. Without options the same datagram is redirected.
#[test]
fn datagrams_with_options_go_to_the_kernel_even_with_a_cached_hop() {
    let mut fx = Fixture::new();
    {
        let mut dp = fx.progs().dataplane().unwrap();
        dp.hop_cache()
            .unwrap()
            .set_routing(floatip_common::Routing {
                epoch: 7,
                default_index: 0,
                lease_ns: u64::MAX,
            })
            .unwrap();
        let hop = floatip_common::NextHop {
            ifindex: LO,
            epoch: 7,
            mtu: 1500,
            _pad: 0,
            smac: MAC_A,
            dmac: MAC_B,
        };
        assert!(dp.set_hop(FIP1, FIXED1, hop).unwrap());
    }
    let record_route = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let timestamp = vec![0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let datagram = |d: Ipv4Addr, options: &[u8]| {
        let mut ip = Ip::new(REMOTE, d, 17);
        ip.options = options.to_vec();
        pkt::eth(MAC_A, MAC_B, None, 0x0800, &ip.packet(&udp_l4(REMOTE, d)))
    };
    for (prog, redirect, pass) in [
        (TestProgram::XdpExternal, XDP_REDIRECT, XDP_PASS),
        (TestProgram::TcExternal, TC_ACT_REDIRECT, TC_ACT_OK),
    ] {
        let (action, _) = fx.run(prog, &datagram(FIP1, &[]));
        assert_eq!(action, redirect, "{prog:?} without options: the cached hop");
        for options in [&record_route, &timestamp] {
            let (action, out) = fx.run(prog, &datagram(FIP1, options));
            assert_eq!(
                (action, hex(&out)),
                (pass, hex(&datagram(FIXED1, options))),
                "{prog:?} options {options:?}"
            );
        }
    }
}

#[test]
fn vlan_tagged_frames_are_translated() {
    let tagged = |s: Ipv4Addr, d: Ipv4Addr| {
        pkt::eth(
            MAC_A,
            MAC_B,
            Some(100),
            0x0800,
            &Ip::new(s, d, 17).packet(&udp_l4(s, d)),
        )
    };
    check(
        Side::External,
        &tagged(REMOTE, FIP1),
        Expect::Pass,
        &tagged(REMOTE, FIXED1),
    );
    check(
        Side::Internal,
        &tagged(FIXED1, REMOTE),
        Expect::Pass,
        &tagged(FIP1, REMOTE),
    );
}

#[test]
fn arp_request_for_floating_ip_is_answered() {
    let router_mac = [0x02, 0, 0, 0, 0, 0x01];
    let req = pkt::arp([0xff; 6], router_mac, 1, router_mac, ROUTER, [0; 6], FIP1);
    let reply = pkt::arp(router_mac, MAC_A, 2, MAC_A, FIP1, router_mac, ROUTER);
    check(Side::External, &req, Expect::Reply, &reply);
}

#[test]
fn other_arp_is_passed_untouched() {
    let m = [0x02, 0, 0, 0, 0, 0x01];
    for f in [
        pkt::arp([0xff; 6], m, 1, m, ROUTER, [0; 6], UNASSOC),
        pkt::arp(MAC_A, m, 2, m, ROUTER, MAC_A, FIP1),
        // Gratuitous announcement of the floating IP by someone else.
        pkt::arp([0xff; 6], m, 1, m, FIP1, [0; 6], FIP1),
    ] {
        check(Side::External, &f, Expect::Pass, &f);
    }
}

#[test]
fn spoofed_sources_are_dropped() {
    // From outside claiming to be an instance behind the gateway.
    check(
        Side::External,
        &frame(FIXED1, FIP2, 17, udp_l4),
        Expect::Drop,
        &[],
    );
    // From inside claiming a floating IP.
    check(
        Side::Internal,
        &frame(UNASSOC, REMOTE, 17, udp_l4),
        Expect::Drop,
        &[],
    );
}

/// From outside, one of the gateway's own addresses as source is a spoof (a
/// router drops it: RFC 1812 §5.3.7): translated, it would make the instance
/// answer the gateway itself. Any address of the namespace counts, also one
/// in a /16 that holds no association (the filter counts them), and only
/// while the gateway has it.
#[test]
fn the_gateways_own_addresses_are_spoofed_sources_from_outside() {
    let mut fx = Fixture::new();
    let elsewhere = Ipv4Addr::new(172, 16, 5, 1);
    let drops = |fx: &mut Fixture, src| {
        let (action, out) = fx.run(TestProgram::XdpExternal, &frame(src, FIP1, 17, udp_l4));
        match action {
            XDP_DROP => true,
            XDP_PASS => {
                assert_eq!(hex(&out), hex(&frame(src, FIXED1, 17, udp_l4)), "{src}");
                false
            }
            a => panic!("{src}: action {a}"),
        }
    };
    let mut dp = fx.progs().dataplane().unwrap();
    assert!(!drops(&mut fx, GW_INT) && !drops(&mut fx, elsewhere));
    assert!(
        dp.set_gateway_addresses(&[GW_INT, elsewhere, GW_INT])
            .unwrap()
    );
    assert!(drops(&mut fx, GW_INT), "the gateway's tenant-side address");
    assert!(
        drops(&mut fx, elsewhere),
        "an address in a /16 without pairs"
    );
    assert!(!drops(&mut fx, REMOTE));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
    assert!(!dp.set_gateway_addresses(&[elsewhere, GW_INT]).unwrap());
    assert!(dp.set_gateway_addresses(&[GW_INT]).unwrap());
    assert!(!drops(&mut fx, elsewhere), "gone from the gateway");
    assert!(drops(&mut fx, GW_INT));
    assert_eq!(dp.gateway_addresses().unwrap(), vec![GW_INT]);
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
}

/// The anti-spoofing filter follows every change of the association maps:
/// a fixed IP is dropped as a source from outside exactly while it is
/// associated, and the filter's counts stay exact.
#[test]
fn spoof_filter_follows_the_associations() {
    let mut fx = Fixture::new();
    let moved = Ipv4Addr::new(10, 0, 0, 77);
    // Same bucket as FIXED1 (its /16): the count must be 2, then 1.
    let twin = Ipv4Addr::new(10, 0, 9, 11);
    assert_eq!(FIXED1.octets()[..2], twin.octets()[..2]);
    let drops = |fx: &mut Fixture, src| {
        let (action, _) = fx.run(TestProgram::XdpExternal, &frame(src, FIP2, 17, udp_l4));
        action == 1
    };
    let mut dp = fx.progs().dataplane().unwrap();
    dp.nat_add(Ipv4Addr::new(203, 0, 113, 50), twin).unwrap();
    assert!(drops(&mut fx, FIXED1) && drops(&mut fx, twin));
    dp.nat_move(FIP1, moved).unwrap();
    assert!(
        !drops(&mut fx, FIXED1),
        "the old fixed IP is an ordinary source again"
    );
    assert!(drops(&mut fx, moved) && drops(&mut fx, twin));
    dp.nat_del(FIP1).unwrap();
    assert!(!drops(&mut fx, moved));
    dp.nat_purge(Ipv4Addr::new(203, 0, 113, 50), twin).unwrap();
    assert!(!drops(&mut fx, twin));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
    dp.nat_add(FIP1, FIXED1).unwrap();
    assert!(drops(&mut fx, FIXED1));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
}

/// The filter also counts pool prefixes (and floating IPs): a source from a pool is dropped as
/// spoofed in a /16 that holds no association, across every /16 a short prefix spans, until
/// the prefix goes; the counts stay exact through adds, holes and removals.
#[test]
fn spoof_filter_counts_pool_prefixes() {
    let mut fx = Fixture::new();
    let drops = |fx: &mut Fixture, src| {
        let (action, _) = fx.run(TestProgram::XdpExternal, &frame(src, FIP2, 17, udp_l4));
        action == 1
    };
    let mut dp = fx.progs().dataplane().unwrap();
    let (far, wide) = (Ipv4Addr::new(198, 51, 100, 9), Ipv4Addr::new(172, 31, 4, 4));
    assert!(!drops(&mut fx, far) && !drops(&mut fx, wide));
    let add = |dp: &mut floatip::dataplane::Dataplane, addr, len, excluded| {
        dp.pool_prefix_add(addr, len, excluded, floatip_common::POOL_ANY_NIC)
            .unwrap()
    };
    let net = Ipv4Addr::new(198, 51, 100, 0);
    add(&mut dp, net, 24, false);
    // A /12: 16 /16s, the address in the last of them.
    add(&mut dp, Ipv4Addr::new(172, 16, 0, 0), 12, false);
    assert!(drops(&mut fx, far) && drops(&mut fx, wide));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
    // Written again (as attach's resync does): counted once.
    add(&mut dp, net, 24, false);
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
    // A hole makes its address ordinary again, the rest of the prefix stays a pool.
    add(&mut dp, far, 32, true);
    assert!(!drops(&mut fx, far));
    assert!(drops(&mut fx, Ipv4Addr::new(198, 51, 100, 10)));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
    dp.pool_prefix_del(far, 32).unwrap();
    dp.pool_prefix_del(Ipv4Addr::new(198, 51, 100, 0), 24)
        .unwrap();
    dp.pool_prefix_del(Ipv4Addr::new(172, 16, 0, 0), 12)
        .unwrap();
    assert!(!drops(&mut fx, far) && !drops(&mut fx, wide));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
    // A floating IP outside every pool (`nat add` plumbing) counts too.
    let lone = Ipv4Addr::new(192, 0, 2, 200);
    dp.nat_add(lone, Ipv4Addr::new(10, 0, 0, 99)).unwrap();
    assert!(drops(&mut fx, lone));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
    dp.nat_del(lone).unwrap();
    assert!(!drops(&mut fx, lone));
    assert_eq!(dp.spoof_filter_mismatches().unwrap(), vec![]);
}

#[test]
fn unassociated_pool_address_is_dropped() {
    check(
        Side::External,
        &frame(REMOTE, UNASSOC, 17, udp_l4),
        Expect::Drop,
        &[],
    );
}

#[test]
fn everything_else_passes_bit_identical() {
    let cases = vec![
        // The router's own address is excluded from the pool.
        frame(REMOTE, ROUTER, 17, udp_l4),
        frame(REMOTE, Ipv4Addr::new(192, 0, 2, 5), 6, tcp_l4),
        // TTL about to expire: the kernel must see what the sender sent.
        {
            let mut ip = Ip::new(REMOTE, FIP1, 17);
            ip.ttl = 1;
            pkt::ipv4_frame(&ip, &udp_l4(REMOTE, FIP1))
        },
        // IPv6.
        pkt::eth(MAC_A, MAC_B, None, 0x86dd, &payload(60)),
        // Truncated: total length beyond the frame.
        frame(REMOTE, FIP1, 17, udp_l4)[..40].to_vec(),
    ];
    for f in &cases {
        check(Side::External, f, Expect::Pass, f);
    }
    let internal = vec![frame(Ipv4Addr::new(10, 0, 0, 99), REMOTE, 17, udp_l4), {
        let mut ip = Ip::new(FIXED1, REMOTE, 17);
        ip.ttl = 1;
        pkt::ipv4_frame(&ip, &udp_l4(FIXED1, REMOTE))
    }];
    for f in &internal {
        check(Side::Internal, f, Expect::Pass, f);
    }
}

#[test]
fn counters_follow_the_packets() {
    let mut fx = Fixture::new();
    let f = frame(REMOTE, FIP1, 17, udp_l4);
    for _ in 0..3 {
        fx.run(TestProgram::XdpExternal, &f);
    }
    fx.run(TestProgram::XdpInternal, &frame(FIXED1, REMOTE, 17, udp_l4));
    fx.run(
        TestProgram::XdpExternal,
        &frame(REMOTE, UNASSOC, 17, udp_l4),
    );
    // Truncated: the total length runs past the frame.
    fx.run(TestProgram::XdpExternal, &f[..40]);
    let dp = fx.progs().dataplane().unwrap();
    let s = dp.pair_stats(Some(FIP1)).unwrap()[0];
    assert_eq!((s.in_packets, s.out_packets), (3, 1));
    assert_eq!(s.in_bytes, 3 * f.len() as u64);
    let c = dp.outcomes().unwrap();
    assert_eq!(c["translated"], 4);
    assert_eq!(c["dropped_unassociated"], 1);
    assert_eq!((c["errors"], c["passed"]), (1, 0), "{c:?}");
}

/// Counters live in slots handed out by the loader: each association has
/// its own, a move keeps them, a new association starts from zero, and a
/// full table (every association at once) still gives every pair its own.
#[test]
fn counter_slots_are_per_association() {
    let mut fx = Fixture::new();
    let to1 = frame(REMOTE, FIP1, 17, udp_l4);
    let to2 = frame(REMOTE, FIP2, 17, udp_l4);
    for _ in 0..2 {
        fx.run(TestProgram::XdpExternal, &to1);
    }
    fx.run(TestProgram::XdpExternal, &to2);
    let stats = |fx: &Fixture, fip| {
        let s = fx
            .progs()
            .dataplane()
            .unwrap()
            .pair_stats(Some(fip))
            .unwrap()[0];
        (s.in_packets, s.out_packets)
    };
    assert_eq!((stats(&fx, FIP1), stats(&fx, FIP2)), ((2, 0), (1, 0)));

    let other = Ipv4Addr::new(10, 0, 0, 77);
    fx.progs()
        .dataplane()
        .unwrap()
        .nat_move(FIP1, other)
        .unwrap();
    fx.run(TestProgram::XdpExternal, &to1);
    assert_eq!(stats(&fx, FIP1), (3, 0), "a move keeps the counters");

    let mut dp = fx.progs().dataplane().unwrap();
    dp.nat_del(FIP1).unwrap();
    dp.nat_add(FIP1, FIXED1).unwrap();
    assert_eq!(stats(&fx, FIP1), (0, 0), "a new association starts at zero");
    assert_eq!(stats(&fx, FIP2), (1, 0), "others keep theirs");

    // Fill the maps (1024 associations in this fixture) and send one packet
    // to each floating IP: every pair must count exactly its own packet.
    let pairs: Vec<_> = (0..1022u32)
        .map(|i| {
            (
                Ipv4Addr::from(0x0ac8_0000 + i),
                Ipv4Addr::from(0x0a10_0000 + i),
            )
        })
        .collect();
    for (f, x) in &pairs {
        dp.nat_add(*f, *x).unwrap();
    }
    for (f, _) in &pairs {
        let (action, _) = fx.run(TestProgram::XdpExternal, &frame(REMOTE, *f, 17, udp_l4));
        assert_ne!(action, 1, "XDP_DROP for {f}");
    }
    for s in dp.pair_stats(None).unwrap() {
        let want = if pairs.iter().any(|(f, _)| *f == s.floating) {
            1
        } else {
            stats(&fx, s.floating).0
        };
        assert_eq!(s.in_packets, want, "counters of {}", s.floating);
    }
    assert_eq!(dp.pair_stats(None).unwrap().len(), 1024);
}

/// Counters count every packet exactly, shared ones (the loader's choice where per-CPU copies
/// would not fit its memory budget, atomic adds) as well as per-CPU ones, also with two CPUs
/// counting the same associations at once: each runs a frame N times in one test run. A pair
/// and its mirror image (FIP1 → FIXED1, FIXED1 → FIP1) make every repetition a hit: a
/// repetition runs on the frame the one before rewrote, which the mirror pair translates back,
/// so each CPU counts N/2 packets for each pair.
#[test]
fn counters_count_exactly_with_cpus_at_once() {
    const N: u32 = 400_000;
    let f = frame(REMOTE, FIP1, 17, udp_l4);
    for counters in [Counters::Shared, Counters::PerCpu] {
        for p in [TestProgram::XdpExternal, TestProgram::TcExternal] {
            let fx = Fixture::with_counters(&[(FIP1, FIXED1), (FIXED1, FIP1)], Some(counters));
            let dp = fx.progs().dataplane().unwrap();
            assert_eq!(dp.counters(), counters);
            let actions = fx.run_on_cpus(p, &f, N, &[0, 1]);
            let pass = if is_tc(p) { TC_ACT_OK } else { XDP_PASS };
            assert_eq!(actions, [pass, pass], "{counters:?} {p:?}");
            let stats = dp.pair_stats(None).unwrap();
            assert_eq!(stats.len(), 2);
            for s in stats {
                assert_eq!(
                    (s.in_packets, s.in_bytes, s.out_packets, s.out_bytes),
                    (u64::from(N), u64::from(N) * f.len() as u64, 0, 0),
                    "{counters:?} {p:?}: counters of {}",
                    s.floating
                );
            }
            assert_eq!(dp.outcomes().unwrap()["translated"], 2 * u64::from(N));
        }
    }
}

/// RFC 1812 §5.2.2: a router discards a datagram whose header checksum is
/// wrong. floatip neither translates nor forwards it: it hands it to the
/// kernel untouched, counted as an error, and the kernel discards it (and
/// counts it in `InCsumErrors`, as the reference router does). Options are
/// part of the sum.
#[test]
fn bad_ipv4_header_checksum_is_not_translated() {
    let bad_check = |mut f: Vec<u8>| {
        f[14 + 10] ^= 0x5a;
        f
    };
    let with_opts = |s: Ipv4Addr, d: Ipv4Addr| {
        let mut ip = Ip::new(s, d, 17);
        ip.options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];
        pkt::ipv4_frame(&ip, &udp_l4(s, d))
    };
    // A flipped bit in the first and in the last option word.
    let bad_option = |at: usize| {
        move |mut f: Vec<u8>| {
            f[14 + at] ^= 0x01;
            f
        }
    };
    for (side, src, dst) in [
        (Side::External, REMOTE, FIP1),
        (Side::Internal, FIXED1, REMOTE),
        (Side::Internal, FIXED1, FIP2),
    ] {
        check_untouched(side, &bad_check(frame(src, dst, 17, udp_l4)));
        check_untouched(side, &bad_check(frame(src, dst, 6, tcp_l4)));
        check_untouched(side, &bad_option(22)(with_opts(src, dst)));
        check_untouched(side, &bad_option(27)(with_opts(src, dst)));
    }
    let mut fx = Fixture::new();
    fx.run(
        TestProgram::XdpExternal,
        &bad_check(frame(REMOTE, FIP1, 17, udp_l4)),
    );
    let c = fx.progs().dataplane().unwrap().outcomes().unwrap();
    assert_eq!((c["errors"], c["translated"]), (1, 0), "{c:?}");
}

/// A router takes only frames addressed to its own MAC and does not forward
/// link-layer broadcast or multicast (RFC 1812 §5.3.4). A frame a learning
/// bridge floods (another host's MAC, broadcast, multicast) is left to the
/// kernel untouched, which drops it or delivers it locally.
#[test]
fn frames_not_addressed_to_the_nic_are_not_translated() {
    let other_host = [0x02, 0, 0, 0, 0, 0x0c];
    let broadcast = [0xff; 6];
    let multicast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
    for mac in [other_host, broadcast, multicast] {
        let to = |src: Ipv4Addr, dst: Ipv4Addr| {
            pkt::eth(
                mac,
                MAC_B,
                None,
                0x0800,
                &Ip::new(src, dst, 17).packet(&udp_l4(src, dst)),
            )
        };
        check_untouched(Side::External, &to(REMOTE, FIP1));
        check_untouched(Side::Internal, &to(FIXED1, REMOTE));
        // East-west between two instances, flooded to the gateway too.
        check_untouched(Side::Internal, &to(FIXED1, FIXED2));
        check_untouched(Side::Internal, &to(FIXED1, FIP2));
    }
}

/// ARP is answered only for requests to the NIC's MAC or broadcast and
/// only untagged: a request unicast to another host is that host's, and a
/// tagged one belongs to a VLAN the kernel owns (at TC ingress the outer
/// tag is in the skb's metadata, not the frame).
#[test]
fn arp_requests_not_for_this_nic_are_not_answered() {
    let router_mac = [0x02, 0, 0, 0, 0, 0x01];
    let other_host = [0x02, 0, 0, 0, 0, 0x0c];
    let req = |to| pkt::arp(to, router_mac, 1, router_mac, ROUTER, [0; 6], FIP1);
    let reply = pkt::arp(router_mac, MAC_A, 2, MAC_A, FIP1, router_mac, ROUTER);
    check(Side::External, &req(MAC_A), Expect::Reply, &reply);
    check_untouched(Side::External, &req(other_host));
    for tags in [
        &[(0x8100, 100)][..],
        &[(0x88a8, 10), (0x8100, 100)],
        &[(0x8100, 10), (0x8100, 100)],
    ] {
        check_untouched(Side::External, &pkt::with_tags(&req([0xff; 6]), tags));
    }
    let mut fx = Fixture::new();
    let (action, out) = fx.run_tc_tagged(true, &req([0xff; 6]));
    assert_eq!((action, hex(&out)), (TC_ACT_OK, hex(&req([0xff; 6]))));
}

/// A pool bound to an external NIC (`pool create --external`) is answered on that NIC only:
/// two external networks on one gateway stay apart. The test runs arrive on `LO`; the pool is
/// bound to another NIC, to none this gateway has, to `LO`, and to any NIC. An associated
/// address outside every pool (`nat` plumbing) is answered on any NIC.
#[test]
fn arp_is_answered_only_on_the_pools_nic() {
    let router_mac = [0x02, 0, 0, 0, 0, 0x01];
    let req = |fip| pkt::arp([0xff; 6], router_mac, 1, router_mac, ROUTER, [0; 6], fip);
    let reply = |fip| pkt::arp(router_mac, MAC_A, 2, MAC_A, fip, router_mac, ROUTER);
    let mut fx = Fixture::new();
    let bind = |fx: &Fixture, nic: u32| {
        let mut dp = fx.progs().dataplane().unwrap();
        dp.pool_prefix_add(Ipv4Addr::new(203, 0, 113, 0), 24, false, nic)
            .unwrap();
        dp.pool_prefix_add(ROUTER, 32, true, nic).unwrap();
    };
    for (nic, answered) in [
        (LO + 1, false),
        (floatip_common::POOL_NO_NIC, false),
        (LO, true),
        (floatip_common::POOL_ANY_NIC, true),
    ] {
        bind(&fx, nic);
        if answered {
            check_with(
                &mut fx,
                Side::External,
                &req(FIP1),
                Expect::Reply,
                &reply(FIP1),
            );
        } else {
            check_with(
                &mut fx,
                Side::External,
                &req(FIP1),
                Expect::Pass,
                &req(FIP1),
            );
        }
    }
    let outside = Ipv4Addr::new(192, 0, 2, 77);
    bind(&fx, LO + 1);
    let mut dp = fx.progs().dataplane().unwrap();
    dp.nat_del(FIP1).unwrap();
    dp.nat_add(outside, FIXED1).unwrap();
    check_with(
        &mut fx,
        Side::External,
        &req(outside),
        Expect::Reply,
        &reply(outside),
    );
}

/// A pool of a gateway group is answered only while the gateway's lease is known alive: its
/// entries are fenced, and the programs answer for them until `answer_until` (which the agent
/// renews with every keep-alive), so a gateway whose agent died or lost etcd goes quiet by
/// itself. Entries that are not fenced (one gateway) ignore the deadline.
#[test]
fn fenced_pools_are_answered_only_until_the_deadline() {
    let router_mac = [0x02, 0, 0, 0, 0, 0x01];
    let req = pkt::arp([0xff; 6], router_mac, 1, router_mac, ROUTER, [0; 6], FIP1);
    let reply = pkt::arp(router_mac, MAC_A, 2, MAC_A, FIP1, router_mac, ROUTER);
    let mut fx = Fixture::new();
    let fence = |fx: &Fixture, fenced: bool| {
        let mut dp = fx.progs().dataplane().unwrap();
        dp.pool_prefix_add_fenced(Ipv4Addr::new(203, 0, 113, 0), 24, false, LO, fenced)
            .unwrap();
    };
    let until =
        |fx: &Fixture, d: Duration| fx.progs().dataplane().unwrap().set_answer_until(d).unwrap();
    fence(&fx, true);
    // Never renewed: quiet.
    check_with(&mut fx, Side::External, &req, Expect::Pass, &req);
    until(&fx, Duration::from_secs(30));
    check_with(&mut fx, Side::External, &req, Expect::Reply, &reply);
    // The deadline passed (the agent stopped renewing): quiet again.
    until(&fx, Duration::ZERO);
    check_with(&mut fx, Side::External, &req, Expect::Pass, &req);
    // Not fenced: the deadline does not matter.
    fence(&fx, false);
    check_with(&mut fx, Side::External, &req, Expect::Reply, &reply);
}

/// Martian sources (RFC 1812 §5.3.7: 0/8, 127/8, multicast, class E and
/// limited broadcast) towards a floating IP are dropped, from either side;
/// so are packets from outside claiming a floating IP of this gateway, or
/// any pool address, as their source.
#[test]
fn martian_and_own_sources_towards_a_floating_ip_are_dropped() {
    for src in [
        Ipv4Addr::new(0, 0, 0, 0),
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(239, 255, 255, 250),
        Ipv4Addr::new(240, 0, 0, 1),
        Ipv4Addr::new(255, 255, 255, 255),
    ] {
        check(
            Side::External,
            &frame(src, FIP1, 17, udp_l4),
            Expect::Drop,
            &[],
        );
        check(
            Side::Internal,
            &frame(src, FIP2, 17, udp_l4),
            Expect::Drop,
            &[],
        );
    }
    for own in [FIP2, FIP1, UNASSOC] {
        check(
            Side::External,
            &frame(own, FIP1, 17, udp_l4),
            Expect::Drop,
            &[],
        );
    }
    // Neighbours of the martian ranges are ordinary sources.
    for src in [Ipv4Addr::new(1, 0, 0, 1), Ipv4Addr::new(223, 255, 255, 254)] {
        check(
            Side::External,
            &frame(src, FIP1, 17, udp_l4),
            Expect::Pass,
            &frame(src, FIXED1, 17, udp_l4),
        );
    }
}

fn udplite_l4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    pkt::udplite(src, dst, 40000, 5004, &payload(41))
}

fn dccp_l4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    pkt::dccp(src, dst, 40000, 5001, &payload(33))
}

/// UDP-Lite (136) and DCCP (33) checksums cover the pseudo-header too, as
/// TCP's and UDP's do: they follow the translated addresses, also in the
/// quote of an ICMP error.
#[test]
fn udplite_and_dccp_checksums_follow_the_addresses() {
    for (proto, l4) in [
        (136u8, udplite_l4 as fn(Ipv4Addr, Ipv4Addr) -> Vec<u8>),
        (33, dccp_l4),
    ] {
        check(
            Side::External,
            &frame(REMOTE, FIP1, proto, l4),
            Expect::Pass,
            &frame(REMOTE, FIXED1, proto, l4),
        );
        check(
            Side::Internal,
            &frame(FIXED1, REMOTE, proto, l4),
            Expect::Pass,
            &frame(FIP1, REMOTE, proto, l4),
        );
        check(
            Side::Internal,
            &frame(FIXED1, FIP2, proto, l4),
            Expect::Pass,
            &frame(FIP1, FIXED2, proto, l4),
        );
        let quote = |s: Ipv4Addr, d: Ipv4Addr| Ip::new(s, d, proto).packet(&l4(s, d));
        check(
            Side::External,
            &icmp_error_frame(ROUTER, FIP1, 3, 3, &quote(FIP1, REMOTE)),
            Expect::Pass,
            &icmp_error_frame(ROUTER, FIXED1, 3, 3, &quote(FIXED1, REMOTE)),
        );
        check(
            Side::Internal,
            &icmp_error_frame(FIXED1, REMOTE, 3, 3, &quote(REMOTE, FIXED1)),
            Expect::Pass,
            &icmp_error_frame(FIP1, REMOTE, 3, 3, &quote(REMOTE, FIP1)),
        );
    }
}

/// A first fragment too short to hold the TCP checksum (8 + 32 and
/// 16 + 24 bytes of a 40-byte segment): the checksum lies at a known offset
/// of the segment, so the fragment that holds it is the one updated, each
/// fragment on its own (a duplicate is updated the same way).
#[test]
fn checksum_in_a_later_fragment_is_translated() {
    let seg = |s, d| pkt::tcp(s, d, 40000, 80, &payload(20));
    for cuts in [&[8usize][..], &[16], &[8, 16], &[8, 24]] {
        for (side, (src, dst), (tsrc, tdst)) in [
            (Side::External, (REMOTE, FIP1), (REMOTE, FIXED1)),
            (Side::Internal, (FIXED1, REMOTE), (FIP1, REMOTE)),
            (Side::Internal, (FIXED1, FIP2), (FIP1, FIXED2)),
        ] {
            let ins = pkt::fragments_at(&Ip::new(src, dst, 6), &seg(src, dst), cuts);
            let outs = pkt::fragments_at(&Ip::new(tsrc, tdst, 6), &seg(tsrc, tdst), cuts);
            for (i, o) in ins.iter().zip(&outs) {
                let fi = pkt::eth(MAC_A, MAC_B, None, 0x0800, i);
                let fo = pkt::eth(MAC_A, MAC_B, None, 0x0800, o);
                check(side, &fi, Expect::Pass, &fo);
            }
        }
    }
}

/// At TC ingress the kernel has moved a frame's outer VLAN tag into the
/// skb's metadata. A frame with a second tag (QinQ) is as stacked as one
/// with both tags in the frame: untouched. With one tag it is treated as
/// XDP treats an in-frame tag: translated and left to the kernel, whose
/// VLAN device owns it (not redirected, which would carry the tag into the
/// tenant network).
#[test]
fn tc_sees_the_outer_vlan_tag_in_the_metadata() {
    let mut fx = Fixture::new();
    let ip_frame = |tags: &[(u16, u16)], s: Ipv4Addr, d: Ipv4Addr| {
        pkt::eth_tagged(
            MAC_A,
            MAC_B,
            tags,
            0x0800,
            &Ip::new(s, d, 17).packet(&udp_l4(s, d)),
        )
    };
    for (external, src, dst) in [(true, REMOTE, FIP1), (false, FIXED1, REMOTE)] {
        for inner in [0x8100, 0x88a8] {
            let qinq = ip_frame(&[(inner, 200)], src, dst);
            let (action, out) = fx.run_tc_tagged(external, &qinq);
            assert_eq!((action, hex(&out)), (TC_ACT_OK, hex(&qinq)), "QinQ");
        }
    }
    let (action, out) = fx.run_tc_tagged(true, &ip_frame(&[], REMOTE, FIP1));
    assert_eq!(
        (action, hex(&out)),
        (TC_ACT_OK, hex(&ip_frame(&[], REMOTE, FIXED1)))
    );
}

/// An instance talking to the gateway itself (its tenant-side address, its
/// external address, the tenant subnet's broadcast, loopback) keeps its
/// fixed source: only what leaves through an external NIC is SNATed, and
/// the gateway's reply must find the instance. The FIB lookup that decides
/// the forwarding says so before the rewrite.
#[test]
fn traffic_to_the_gateway_itself_keeps_its_fixed_source() {
    for dst in [
        GW_INT,
        ROUTER,
        Ipv4Addr::new(10, 0, 0, 255),
        Ipv4Addr::new(127, 0, 0, 1),
    ] {
        for (proto, l4) in [
            (17u8, udp_l4 as fn(Ipv4Addr, Ipv4Addr) -> Vec<u8>),
            (6, tcp_l4),
            (1, echo_l4),
        ] {
            check_untouched(Side::Internal, &frame(FIXED1, dst, proto, l4));
        }
    }
    let mut fx = Fixture::new();
    fx.run(TestProgram::XdpInternal, &frame(FIXED1, GW_INT, 17, udp_l4));
    let dp = fx.progs().dataplane().unwrap();
    assert_eq!(dp.pair_stats(Some(FIP1)).unwrap()[0].out_packets, 0);
    let c = dp.outcomes().unwrap();
    assert_eq!((c["translated"], c["passed"]), (0, 1), "{c:?}");
}

/// From an instance, a packet the kernel answers with an ICMP error (too
/// big for the egress MTU with DF set, an unreachable route) goes to the
/// kernel as the instance sent it, so the error quotes the fixed address
/// its socket knows and PMTU discovery and EHOSTUNREACH work. Without DF
/// it is translated (the kernel fragments it).
#[test]
fn packets_the_kernel_answers_with_an_error_keep_their_fixed_source() {
    let big = |s, d, df: bool| {
        let mut ip = Ip::new(s, d, 17);
        ip.frag = if df { 0x4000 } else { 0 };
        pkt::ipv4_frame(&ip, &pkt::udp(s, d, 40000, 53, &payload(1400), true))
    };
    assert!(big(FIXED1, NARROW, true).len() - 14 > NARROW_MTU);
    check_untouched(Side::Internal, &big(FIXED1, NARROW, true));
    check(
        Side::Internal,
        &big(FIXED1, NARROW, false),
        Expect::Pass,
        &big(FIP1, NARROW, false),
    );
    check_untouched(Side::Internal, &frame(FIXED1, UNREACHABLE, 17, udp_l4));
    check_untouched(Side::Internal, &frame(FIXED1, UNREACHABLE, 6, tcp_l4));
    // Small enough: translated as ever.
    check(
        Side::Internal,
        &frame(FIXED1, NARROW, 17, udp_l4),
        Expect::Pass,
        &frame(FIP1, NARROW, 17, udp_l4),
    );
    let mut fx = Fixture::new();
    fx.run(TestProgram::XdpInternal, &big(FIXED1, NARROW, true));
    let c = fx.progs().dataplane().unwrap().outcomes().unwrap();
    assert_eq!((c["translated"], c["passed_to_kernel"]), (0, 1), "{c:?}");
    // Segments GRO merged into one skb (TC): the FIB's "too big" is about
    // the merged length, not a segment's; the kernel segments it, so it is
    // translated as ever (not left untranslated, which would leak the
    // fixed IP, nor answered with an error).
    let (action, got) = fx.run_tc_gso(false, &big(FIXED1, NARROW, true), 1000);
    assert_eq!(
        (action, hex(&got)),
        (TC_ACT_OK, hex(&big(FIP1, NARROW, true))),
        "GRO-merged"
    );
}

/// The ICMP destination-unreachable error a router sends back to `to`
/// about `datagram` (its IPv4 header and 8 bytes quoted), from `from`.
/// The error a router sends about `datagram`: it quotes as much of it as
/// keeps the error within 576 bytes (RFC 1812 §4.3.2.3), as Linux does.
fn unreachable_error(from: Ipv4Addr, to: Ipv4Addr, code: u8, mtu: u16, datagram: &[u8]) -> Vec<u8> {
    let mut ip = Ip::new(from, to, 1);
    ip.id = 0;
    ip.frag = 0;
    let mut packet = ip.packet(&pkt::icmp(
        3,
        code,
        [0, 0, (mtu >> 8) as u8, mtu as u8],
        &datagram[..datagram.len().min(576 - 28)],
    ));
    // Internetwork control precedence, as routers send errors.
    packet[1] = 0xc0;
    packet[10..12].copy_from_slice(&[0, 0]);
    let c = pkt::checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&c.to_be_bytes());
    pkt::eth(MAC_B, MAC_A, None, 0x0800, &packet)
}

/// Towards an instance, a datagram that cannot be forwarded (too big for the
/// MTU towards the instance with DF set, an unreachable route) is answered
/// by the programs themselves with the ICMP error a router sends, quoting
/// the datagram as its sender sent it (the floating IP, not the fixed one),
/// so the sender's PMTU discovery and EHOSTUNREACH work. The same for
/// hairpin traffic. Without DF the datagram is translated (the kernel
/// fragments it).
#[test]
fn datagrams_for_an_instance_that_cannot_be_forwarded_get_an_icmp_error() {
    const FIP3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 13);
    const FIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 14);
    let mut fx = Fixture::with(&[
        (FIP1, FIXED1),
        (FIP2, FIXED2),
        (FIP3, NARROW_FIXED),
        (FIP4, UNREACHABLE_FIXED),
    ]);
    let big = |s, d, df: bool| {
        let mut ip = Ip::new(s, d, 17);
        ip.frag = if df { 0x4000 } else { 0 };
        ip.packet(&pkt::udp(s, d, 40000, 53, &payload(1400), true))
    };
    let small = |s, d| Ip::new(s, d, 6).packet(&tcp_l4(s, d));
    let framed = |p: &[u8]| pkt::eth(MAC_A, MAC_B, None, 0x0800, p);
    for (side, src) in [(Side::External, REMOTE), (Side::Internal, FIXED1)] {
        let d = big(src, FIP3, true);
        let error = unreachable_error(FIP3, src, 4, NARROW_MTU as u16, &d);
        check_with(&mut fx, side, &framed(&d), Expect::Reply, &error);
        let d = small(src, FIP4);
        let error = unreachable_error(FIP4, src, 1, 0, &d);
        check_with(&mut fx, side, &framed(&d), Expect::Reply, &error);
        // Quoted whole, an odd number of bytes (the checksum's last byte).
        let d = Ip::new(src, FIP4, 17).packet(&pkt::udp(src, FIP4, 40000, 53, &payload(33), true));
        let error = unreachable_error(FIP4, src, 1, 0, &d);
        check_with(&mut fx, side, &framed(&d), Expect::Reply, &error);
    }
    check_with(
        &mut fx,
        Side::External,
        &framed(&big(REMOTE, FIP3, false)),
        Expect::Pass,
        &framed(&big(REMOTE, NARROW_FIXED, false)),
    );
    // Never about another ICMP error, nor a non-initial fragment.
    let quote = Ip::new(FIP4, REMOTE, 17).packet(&udp_l4(FIP4, REMOTE));
    let e = icmp_error_frame(ROUTER, FIP4, 3, 3, &quote);
    let translated = icmp_error_frame(
        ROUTER,
        UNREACHABLE_FIXED,
        3,
        3,
        &Ip::new(UNREACHABLE_FIXED, REMOTE, 17).packet(&udp_l4(UNREACHABLE_FIXED, REMOTE)),
    );
    check_with(&mut fx, Side::External, &e, Expect::Pass, &translated);
    let seg = pkt::udp(REMOTE, FIP4, 40000, 53, &payload(40), true);
    let tseg = pkt::udp(REMOTE, UNREACHABLE_FIXED, 40000, 53, &payload(40), true);
    let later = &pkt::fragments_at(&Ip::new(REMOTE, FIP4, 17), &seg, &[16])[1];
    let tlater = &pkt::fragments_at(&Ip::new(REMOTE, UNREACHABLE_FIXED, 17), &tseg, &[16])[1];
    check_with(
        &mut fx,
        Side::External,
        &framed(later),
        Expect::Pass,
        &framed(tlater),
    );
    // Segments GRO merged into one skb (TC) are translated as ever: the
    // FIB's "too big" is about the merged length; the kernel segments it.
    let (action, got) = fx.run_tc_gso(true, &framed(&big(REMOTE, FIP3, true)), 1000);
    assert_eq!(
        (action, hex(&got)),
        (TC_ACT_OK, hex(&framed(&big(REMOTE, NARROW_FIXED, true)))),
        "GRO-merged"
    );
    let c = fx.progs().dataplane().unwrap().outcomes().unwrap();
    assert_eq!(c["icmp_errors"], 12, "{c:?}");
}
