//! A gateway group (issue 14): three gateways on shared segments with their state in a real
//! 3-member etcd cluster ([`tests::gateways::GatewayLab`]), driven through their APIs, with
//! real traffic from the router to the instances.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tests::{
    gateways::{GatewayLab, INST, POOL, Stream, spawn_long},
    netns::{Mode, exec, require_root, serialize},
};

const FIP1: &str = "203.0.113.10";
const FIP2: &str = "203.0.113.20";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Three gateways, all started, and which one owns the pool.
fn lab() -> (GatewayLab, usize) {
    let mut lab = GatewayLab::build(3, Mode::Xdp).unwrap_or_else(|e| panic!("lab: {e:#}"));
    for g in 0..3 {
        lab.start(g)
            .unwrap_or_else(|e| panic!("gw{}: {e:#}", g + 1));
    }
    let owner = owner_index(&lab, 0, Duration::from_secs(5));
    (lab, owner)
}

/// The index of the gateway owning the pool, once exactly one does (as gateway `via` says).
#[track_caller]
fn owner_index(lab: &GatewayLab, via: usize, within: Duration) -> usize {
    let mut name = None;
    GatewayLab::wait(within, || {
        name = lab.owner(via, POOL).ok().flatten();
        name.is_some()
    })
    .unwrap_or_else(|| panic!("no gateway owns {POOL}: {:?}", lab.group(via)));
    let name = name.unwrap();
    lab.gateways.iter().position(|g| g.name == name).unwrap()
}

/// Every gateway's maps hold `floating -> fixed` within `within`; how long it took.
#[track_caller]
fn everywhere(lab: &GatewayLab, floating: &str, fixed: &str, within: Duration) -> Duration {
    let (f, x) = (ip(floating), ip(fixed));
    GatewayLab::wait(within, || {
        (0..lab.gateways.len()).all(|g| lab.has_pair(g, f, x))
    })
    .unwrap_or_else(|| {
        let have: Vec<_> = (0..lab.gateways.len()).map(|g| lab.pairs(g)).collect();
        panic!("{floating} -> {fixed} not on every gateway within {within:?}: {have:?}")
    })
}

/// A TCP exchange from the router to `floating`, answered by the instance with `fixed`,
/// which sees the router's own address.
#[track_caller]
fn tcp_works(lab: &GatewayLab, floating: &str, inst: usize, port: u16) {
    let np = lab.netprobe();
    let mut server =
        tests::netns::spawn(&lab.inst[inst], &[&np, "tcp-serve", &port.to_string()]).unwrap();
    server
        .wait_for("listening", Duration::from_secs(10))
        .unwrap();
    let out = exec(
        &lab.rtr,
        &[&np, "tcp-send", floating, &port.to_string(), "2000", "7"],
    );
    assert!(out.success(), "tcp to {floating}: {out}");
    let served = server.finish(Duration::from_secs(10));
    assert!(served.stdout.contains("peer=198.51.100.1:"), "{served}");
}

#[test]
fn association_reaches_every_gateway_and_one_owns_the_pool() {
    require_root();
    let _serial = serialize();
    let (lab, owner) = lab();
    let record = lab.associate(1, FIP1, INST[0]).unwrap();
    assert_eq!(record["fixed_ip_address"], INST[0], "{record}");
    let took = everywhere(&lab, FIP1, INST[0], Duration::from_secs(2));
    eprintln!("association on every gateway {took:?} after the API's answer");
    // ACTIVE once every gateway has applied it, whichever API is asked.
    let id = record["id"].as_str().unwrap().to_owned();
    GatewayLab::wait(Duration::from_secs(3), || {
        lab.api(2, "GET", &format!("/v2.0/floatingips/{id}"), None)
            .is_ok_and(|(_, b)| b["floatingip"]["status"] == "ACTIVE")
    })
    .expect("the floating IP never became ACTIVE");
    // Exactly one live owner, and every gateway says the same.
    for g in 0..3 {
        assert_eq!(owner_index(&lab, g, Duration::from_secs(2)), owner);
        let v = lab.group(g).unwrap();
        let owners = v["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|gw| gw["pools"].as_array().unwrap().iter().any(|p| p == POOL))
            .count();
        assert_eq!(owners, 1, "{v}");
        assert_eq!(v["gateways"].as_array().unwrap().len(), 3, "{v}");
    }
    tcp_works(&lab, FIP1, 0, 5001);
    // The router learnt the owner's MAC for the floating IP, and the owner holds the tenant
    // gateway address, no other gateway does.
    let neigh = exec(&lab.rtr, &["ip", "neigh", "show", FIP1]);
    let mac_of = |g: usize| {
        let out = exec(&lab.gateways[g].ns, &["ip", "-o", "link", "show", "ext"]);
        out.stdout
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        neigh.stdout.contains(&mac_of(owner)),
        "{neigh} / {}",
        mac_of(owner)
    );
    for g in 0..3 {
        let addrs = exec(
            &lab.gateways[g].ns,
            &["ip", "-4", "-o", "addr", "show", "int"],
        );
        assert_eq!(
            addrs.stdout.contains("10.0.0.1/24"),
            g == owner,
            "gw{}: {addrs}",
            g + 1
        );
    }
    // A disassociation reaches every gateway too.
    let (status, body) = lab
        .api(
            2,
            "PUT",
            &format!("/v2.0/floatingips/{id}"),
            Some(serde_json::json!({"floatingip": {"port_id": null}})),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    GatewayLab::wait(Duration::from_secs(2), || {
        (0..3).all(|g| lab.pairs(g).is_ok_and(|p| p.is_empty()))
    })
    .expect("the disassociation did not reach every gateway");
}

#[test]
fn owner_killed_fails_over_without_losing_the_tcp_connection() {
    require_root();
    let _serial = serialize();
    let (mut lab, owner) = lab();
    lab.associate(0, FIP1, INST[0]).unwrap();
    lab.associate(0, FIP2, INST[1]).unwrap();
    everywhere(&lab, FIP1, INST[0], Duration::from_secs(2));
    everywhere(&lab, FIP2, INST[1], Duration::from_secs(2));
    let np = lab.netprobe();
    // inst2 listens on the stream's port too: a datagram for FIP1 must never reach it.
    let mut wrong = spawn_long(&lab.inst[1], &[&np, "udp-sink", "6001"]).unwrap();
    wrong
        .wait_for("listening", Duration::from_secs(10))
        .unwrap();
    let mut server = spawn_long(&lab.inst[0], &[&np, "tcp-serve", "6002"]).unwrap();
    server
        .wait_for("listening", Duration::from_secs(10))
        .unwrap();
    let mut tcp = spawn_long(&lab.rtr, &[&np, "tcp-ping", FIP1, "6002", "50"]).unwrap();
    tcp.wait_for("connected", Duration::from_secs(10)).unwrap();
    let stream = Stream::start(&lab, FIP1, 0, 6001, 1000).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let killed_at = Instant::now();
    lab.kill(owner);
    lab.nics(owner, false).unwrap();
    let survivor = (owner + 1) % 3;
    let dead = lab.gateways[owner].name.clone();
    // Until its lease expires the dead gateway still counts as the owner.
    GatewayLab::wait(Duration::from_secs(5), || {
        lab.owner(survivor, POOL)
            .is_ok_and(|o| o.is_some_and(|o| o != dead))
    })
    .expect("no other gateway took the pool over");
    let new_owner = owner_index(&lab, survivor, Duration::from_secs(1));
    eprintln!(
        "gw{} owns {POOL} {:?} after gw{} was killed",
        new_owner + 1,
        killed_at.elapsed(),
        owner + 1
    );
    std::thread::sleep(Duration::from_secs(3));
    let report = stream.finish().unwrap();
    eprintln!("failover: {report:?}");
    assert!(
        report.longest_gap <= Duration::from_secs(3),
        "outage {:?}: {report:?}",
        report.longest_gap
    );
    // Lost: only what the outage took, at 1,000/s.
    let lost = report.sent - report.received;
    assert!(
        lost <= report.longest_gap.as_millis() as u64 + 50,
        "{lost} lost in a {:?} outage: {report:?}",
        report.longest_gap
    );
    assert!(
        tcp.running(),
        "the TCP connection broke: {}",
        tcp.stderr_so_far()
    );

    // The killed gateway comes back: ownership settles without a second outage beyond the
    // lease bound.
    let stream = Stream::start(&lab, FIP1, 0, 6003, 1000).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.nics(owner, true).unwrap();
    lab.start(owner).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let settled = owner_index(&lab, survivor, Duration::from_secs(5));
    let report = stream.finish().unwrap();
    eprintln!(
        "return of gw{}: {report:?}, owner gw{}",
        owner + 1,
        settled + 1
    );
    assert!(
        report.longest_gap <= Duration::from_millis(1500),
        "second outage {:?}: {report:?}",
        report.longest_gap
    );
    tcp.signal(libc::SIGTERM);
    let tcp = tcp.finish(Duration::from_secs(10));
    assert!(tcp.success() && tcp.stdout.contains("ok rounds="), "{tcp}");
    wrong.signal(libc::SIGTERM);
    let wrong = wrong.finish(Duration::from_secs(10));
    assert!(
        wrong.stdout.contains("total=0") || !wrong.stdout.contains("total="),
        "datagrams reached the wrong instance: {wrong}"
    );
    assert!(!wrong.stdout.contains("receiving from"), "{wrong}");
    drop(server);
}

#[test]
fn etcd_member_loss_and_quorum_loss() {
    require_root();
    let _serial = serialize();
    let (mut lab, _owner) = lab();
    lab.associate(0, FIP1, INST[0]).unwrap();
    everywhere(&lab, FIP1, INST[0], Duration::from_secs(2));
    tcp_works(&lab, FIP1, 0, 7001);

    // One member of three: nothing changes.
    lab.etcd.kill(0);
    lab.associate(1, FIP2, INST[1]).unwrap();
    everywhere(&lab, FIP2, INST[1], Duration::from_secs(3));
    tcp_works(&lab, FIP2, 1, 7002);

    // Two of three: forwarding goes on, writes are refused in one line / with a 503.
    lab.etcd.kill(1);
    tcp_works(&lab, FIP1, 0, 7003);
    let (status, body) = lab
        .api(
            2,
            "POST",
            "/v2.0/floatingips",
            Some(serde_json::json!({"floatingip": {"floating_network_id": "x"}})),
        )
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let out = lab.floatip(2, &["ip", "create", POOL]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(5), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(out.stderr.contains("unavailable"), "{out}");
    tcp_works(&lab, FIP2, 1, 7004);

    // Back: the agents catch up, and a new association works everywhere.
    lab.etcd.restart(0).unwrap();
    lab.etcd.restart(1).unwrap();
    let fip3 = "203.0.113.30";
    let mut done = None;
    GatewayLab::wait(Duration::from_secs(15), || {
        done = lab.associate(2, fip3, "10.0.0.13").ok();
        done.is_some()
    })
    .expect("no write succeeded after etcd came back");
    everywhere(&lab, fip3, "10.0.0.13", Duration::from_secs(5));
    owner_index(&lab, 0, Duration::from_secs(5));
    tcp_works(&lab, FIP1, 0, 7005);
}

#[test]
fn a_gateway_restarted_applies_every_association() {
    require_root();
    let _serial = serialize();
    let (mut lab, _) = lab();
    // A second pool on another documentation range, filled fast.
    lab.floatip(0, &["pool", "create", "many", "--range", "192.0.2.0/24"])
        .check()
        .unwrap();
    let out = lab.floatip(
        0,
        &[
            "bench",
            "seed",
            "--pool",
            "many",
            "--count",
            "250",
            "--floating",
            "192.0.2.2",
            "--fixed",
            "10.0.1.2",
        ],
    );
    assert!(out.success(), "{out}");
    let all = |lab: &GatewayLab, g: usize| lab.pairs(g).map(|p| p.len()).unwrap_or(0) == 250;
    GatewayLab::wait(Duration::from_secs(5), || (0..3).all(|g| all(&lab, g)))
        .expect("the seeded associations did not reach every gateway");
    // gw3 stops, loses its maps, and starts again: everything is back.
    lab.kill(2);
    let out = lab.floatip(2, &["detach"]);
    assert!(out.success(), "{out}");
    let started = Instant::now();
    lab.start(2).unwrap();
    GatewayLab::wait(Duration::from_secs(20), || all(&lab, 2))
        .expect("the restarted gateway does not hold every association");
    eprintln!(
        "gw3 restarted with 250 associations: all applied {:?} after its start",
        started.elapsed()
    );
}

/// A gateway cut off from etcd (its management link down) keeps forwarding with what it
/// has, falls silent for its pools at its fence, and catches up when it is back, even when the
/// history it missed has been compacted meanwhile (then by a full resync).
#[test]
fn a_gateway_cut_off_catches_up_even_after_compaction() {
    require_root();
    let _serial = serialize();
    let (mut lab, _) = lab();
    // Make gw3 the gateway cut off, and keep its agent's output to check the resync.
    lab.kill(2);
    lab.start(2).unwrap();
    lab.associate(0, FIP1, INST[0]).unwrap();
    everywhere(&lab, FIP1, INST[0], Duration::from_secs(2));
    let ns3 = lab.gateways[2].ns.clone();
    exec(&ns3, &["ip", "link", "set", "mgmt", "down"])
        .check()
        .unwrap();
    lab.associate(0, FIP2, INST[1]).unwrap();
    // gw3 has the old state and still holds it; the others have the new one. Long enough
    // for gw3's connection to be declared dead (HTTP/2 pings), so its watch must resume.
    std::thread::sleep(Duration::from_secs(4));
    assert!(lab.has_pair(2, ip(FIP1), ip(INST[0])));
    assert!(!lab.has_pair(2, ip(FIP2), ip(INST[1])));
    // Compact the history gw3 has not seen.
    let endpoints = lab.etcd.endpoints().join(",");
    let status = exec(
        &lab.mgmt,
        &[
            "etcdctl",
            "--endpoints",
            &endpoints,
            "endpoint",
            "status",
            "--write-out=json",
        ],
    );
    assert!(status.success(), "{status}");
    let v: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let revision = v[0]["Status"]["header"]["revision"].as_i64().unwrap();
    let out = exec(
        &lab.mgmt,
        &[
            "etcdctl",
            "--endpoints",
            &endpoints,
            "compact",
            &revision.to_string(),
        ],
    );
    assert!(out.success(), "{out}");
    exec(&ns3, &["ip", "link", "set", "mgmt", "up"])
        .check()
        .unwrap();
    everywhere(&lab, FIP2, INST[1], Duration::from_secs(15));
    let agent = lab.gateways[2].agent.as_ref().unwrap();
    let log = agent.stderr_so_far();
    assert!(log.contains("compacted; resyncing"), "{log}");
    // And it is back in the group.
    GatewayLab::wait(Duration::from_secs(10), || {
        lab.group(0).is_ok_and(|v| {
            v["gateways"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["name"] == "gw3" && g["alive"] == true))
        })
    })
    .expect("gw3 did not join again");
}
