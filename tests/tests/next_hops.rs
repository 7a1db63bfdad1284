//! Staleness of the next-hop cache (issue 13): with `floatip follow` running
//! and a 1,000 datagrams/s stream through a floating IP, the kernel's
//! forwarding state changes mid-stream and the test checks that no datagram
//! sent after the follower reported the change handled was lost or went to
//! the stale next hop.
//!
//! - the instance's NIC is re-created with a new MAC (same IP; it announces
//!   itself with a gratuitous ARP), inbound stream;
//! - the gateway's default route moves to a second router (a macvlan with
//!   its own MAC on the router's link), outbound stream, and a capture on
//!   the first router shows what still reached it;
//! - the gateway's internal NIC goes down and up again, inbound stream.
//!
//! The datagrams carry their wall-clock send time, the follower's `-v`
//! reports carry the same clock, so "sent after handled" is exact up to
//! the clock's resolution. The window between the kernel's notification and
//! the cache being right is printed (µs) for BENCHMARKS.md.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tests::netns::{self, EXT_IP, FIP1, INST1_IP, Lab, Mode, Spawned, exec};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const RATE: &str = "1000";
const RTR2_IP: &str = "203.0.113.3";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn sh(ns: &str, argv: &[&str]) {
    netns::assert_success(&exec(ns, argv));
}

struct Stream {
    sink: Spawned,
    sender: Spawned,
    log: PathBuf,
}

fn start_stream(lab: &Lab, from: &str, to: &str, sink_ns: &str, port: &str, log: &Path) -> Stream {
    let watchdog = Duration::from_secs(120);
    let mut sink = lab
        .netprobe_background(
            sink_ns,
            &["udp-sink", port, &log.to_string_lossy()],
            watchdog,
        )
        .expect("start udp-sink");
    sink.wait_for("listening", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let sender = lab
        .netprobe_background(from, &["udp-stream", to, port, RATE], watchdog)
        .expect("start udp-stream");
    sink.wait_for("receiving from", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the stream does not arrive: {e:#}"));
    Stream {
        sink,
        sender,
        log: log.to_owned(),
    }
}

/// Stops the stream; returns what was received (seq -> send time) and how
/// many were sent.
fn stop_stream(mut s: Stream) -> (BTreeMap<u64, u64>, u64) {
    s.sender.signal(libc::SIGTERM);
    let sent = s.sender.finish(Duration::from_secs(10));
    let sink = s.sink.finish(Duration::from_secs(15));
    let total: u64 = sent
        .stdout
        .split_whitespace()
        .find_map(|f| f.strip_prefix("sent="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("udp-stream said:\n{sent}\nsink:\n{sink}"));
    let received = std::fs::read_to_string(&s.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // "SEQ SENT_WALL_US RECEIVED_MONOTONIC_US"
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    (received, total)
}

/// Datagrams lost although sent (by the latest possible bound: the send
/// time of the last datagram received before them) after `after`.
fn lost_after(received: &BTreeMap<u64, u64>, total: u64, after: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut last_sent = 0;
    for seq in 0..total {
        match received.get(&seq) {
            Some(t) => last_sent = *t,
            None if last_sent > after => out.push(seq),
            None => {}
        }
    }
    out
}

/// The first "handled" report of the follower that follows the first
/// report containing `marker` at or after `since` (µs): (handled at,
/// notified at).
fn handled_after(follower: &Spawned, since: u64, marker: &str) -> Option<(u64, u64)> {
    let log = follower.stderr_so_far();
    let mut seen = false;
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("follow: ") else {
            continue;
        };
        let Some((t, what)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<u64>() else { continue };
        if t < since {
            continue;
        }
        if what.contains(marker) {
            seen = true;
        }
        if seen && what.starts_with("handled") {
            let notified = what
                .split("notified at ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(t);
            return Some((t, notified));
        }
    }
    None
}

fn wait_handled(follower: &Spawned, since: u64, marker: &str) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(h) = handled_after(follower, since, marker) {
            return h;
        }
        if Instant::now() > deadline {
            let pid = follower.pid();
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            panic!(
                "the follower never handled {marker:?} after {since}:\n{}\nits stack:\n{stack}",
                follower.stderr_so_far()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `status` says `n` associations are cached (the fast path is
/// in use), or panics.
fn wait_cached(lab: &Lab, n: u64, default_route: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = lab.status().expect("status");
        let hops = &st["next_hops"];
        if hops["cached"].as_u64() == Some(n)
            && hops["default_route"].as_bool() == Some(default_route)
        {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: the cache never got to {n} cached, default {default_route}: {hops}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn redirected(lab: &Lab) -> u64 {
    lab.status().expect("status")["counters"]["redirected"]
        .as_u64()
        .unwrap_or(0)
}

fn staleness(mode: Mode) {
    netns::require_root();
    let _serial = netns::serialize();
    let m = mode.as_str();
    let mut lab = Lab::build(mode, &netns::floatip_binary(), Path::new(NETPROBE))
        .unwrap_or_else(|e| panic!("cannot build the topology: {e:#}"));
    lab.ok(&lab.attach_args(&[]));
    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    lab.ok(&["ip", "create", "public", "--address", FIP1]);
    lab.ok(&["ip", "associate", FIP1, INST1_IP]);
    let mut follower = lab
        .floatip_spawn(&["follow", "-v"])
        .expect("start floatip follow");
    follower
        .wait_for("epoch", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The neighbours become known with the first packets (ping both ways).
    sh(&lab.ext, &["ping", "-c", "2", "-i", "0.2", "-W", "2", FIP1]);
    sh(
        &lab.inst1,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", EXT_IP],
    );
    wait_cached(&lab, 1, true, &format!("[{m}] after the first packets"));
    let mut failures = Vec::new();
    let mut windows = Vec::new();

    // 1. The instance's NIC re-created with a new MAC.
    {
        let log = lab.workdir.join("mac.log");
        let stream = start_stream(
            &lab,
            &lab.ext.clone(),
            FIP1,
            &lab.inst1.clone(),
            "6101",
            &log,
        );
        thread::sleep(Duration::from_millis(500));
        let before = redirected(&lab);
        let (inst1, sw) = (lab.inst1.clone(), lab.sw.clone());
        sh(
            &inst1,
            &["sysctl", "-qw", "net.ipv4.conf.default.arp_notify=1"],
        );
        let t0 = now_us();
        sh(&inst1, &["ip", "link", "del", "eth0"]);
        lab.veth(&inst1, "eth0", &sw, "s-i1").expect("veth");
        sh(&sw, &["ip", "link", "set", "s-i1", "master", "br0", "up"]);
        if mode.is_xdp() {
            sh(&inst1, &["ethtool", "-K", "eth0", "tx", "off"]);
        }
        sh(
            &inst1,
            &["ip", "addr", "add", "10.0.0.11/24", "dev", "eth0"],
        );
        sh(&inst1, &["ip", "link", "set", "eth0", "up"]);
        sh(
            &inst1,
            &["ip", "route", "add", "default", "via", "10.0.0.1"],
        );
        let new_mac = lab.mac(&inst1, "eth0").expect("mac");
        // The instance announces itself (gratuitous ARP) until the gateway's
        // kernel has taken the new MAC: the kernel accepts a new MAC for a
        // neighbour only once its ARP locktime (1 s) has passed since the
        // entry's last update, so the first announcement may go unheeded.
        let netprobe = lab.netprobe_bin.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            sh(&inst1, &[&netprobe, "garp", "eth0", INST1_IP]);
            let neigh = exec(&lab.gw, &["ip", "neigh", "show", INST1_IP, "dev", "gw-int"]);
            if neigh.stdout.contains(&new_mac) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "[{m}] the gateway never took the new MAC {new_mac}: {neigh}"
            );
            thread::sleep(Duration::from_millis(250));
        }
        let (handled, notified) = wait_handled(&follower, t0, &format!("neighbour {INST1_IP} on"));
        let handled_new = handled_after(&follower, t0, &new_mac);
        thread::sleep(Duration::from_millis(700));
        let (received, total) = stop_stream(stream);
        let lost = lost_after(&received, total, handled_new.map_or(handled, |h| h.0));
        windows.push(format!(
            "instance MAC: notified -> handled {} µs, change -> handled {} µs",
            handled - notified,
            handled.saturating_sub(t0)
        ));
        if handled_new.is_none() {
            failures.push(format!("no report of the new MAC {new_mac}"));
        }
        if !lost.is_empty() {
            failures.push(format!(
                "MAC change: {} datagrams lost after the change was handled: {:?}",
                lost.len(),
                &lost[..lost.len().min(10)]
            ));
        }
        if received.len() < 500 {
            failures.push(format!(
                "MAC change: only {} of {total} arrived",
                received.len()
            ));
        }
        if redirected(&lab) <= before {
            failures.push("MAC change: nothing was redirected during the stream".into());
        }
        // The follower has the kernel confirm the new neighbour, and the
        // fast path takes over again.
        wait_cached(&lab, 1, true, &format!("[{m}] after the MAC change"));
    }

    // 2. The default route moves to a second router.
    {
        let rtr = lab.rtr.clone();
        sh(&rtr, &["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]);
        sh(
            &rtr,
            &[
                "ip", "link", "add", "r-gw2", "link", "r-gw", "type", "macvlan", "mode", "bridge",
            ],
        );
        sh(
            &rtr,
            &["ip", "addr", "add", "203.0.113.3/24", "dev", "r-gw2"],
        );
        sh(&rtr, &["ip", "link", "set", "r-gw2", "up"]);
        let old_mac = lab.mac(&rtr, "r-gw").expect("mac");
        let pcap = lab.workdir.join("old-router.pcap");
        let filter = format!("ether dst {old_mac} and udp dst port 6102");
        let mut capture = netns::spawn(
            &rtr,
            &[
                "tcpdump",
                "-i",
                "r-gw",
                "-U",
                "-n",
                "-w",
                &pcap.to_string_lossy(),
                &filter,
            ],
        )
        .expect("tcpdump");
        capture
            .wait_for("listening", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let log = lab.workdir.join("route.log");
        let stream = start_stream(
            &lab,
            &lab.inst1.clone(),
            EXT_IP,
            &lab.ext.clone(),
            "6102",
            &log,
        );
        thread::sleep(Duration::from_millis(500));
        let t0 = now_us();
        sh(
            &lab.gw.clone(),
            &["ip", "route", "replace", "default", "via", RTR2_IP],
        );
        let (handled, notified) = wait_handled(&follower, t0, "epoch");
        thread::sleep(Duration::from_millis(700));
        let (received, total) = stop_stream(stream);
        thread::sleep(Duration::from_millis(200));
        capture.signal(libc::SIGTERM);
        let _ = capture.finish(Duration::from_secs(5));
        let dump = netns::run(
            netns::host_command(&["tcpdump", "-r", &pcap.to_string_lossy(), "-n", "-xx"]),
            Duration::from_secs(20),
        );
        let stale = stale_sends(&dump.stdout);
        let late: Vec<u64> = stale.iter().copied().filter(|&t| t > handled).collect();
        windows.push(format!(
            "default route: notified -> handled {} µs, change -> handled {} µs",
            handled - notified,
            handled.saturating_sub(t0)
        ));
        if stale.iter().all(|&t| t > t0) {
            failures.push(format!("route change: the capture saw nothing before the change ({} frames): it cannot tell", stale.len()));
        }
        if !late.is_empty() {
            failures.push(format!("route change: {} datagrams sent after the change was handled reached the old router", late.len()));
        }
        let lost = lost_after(&received, total, handled);
        if !lost.is_empty() {
            failures.push(format!(
                "route change: {} datagrams lost after it was handled",
                lost.len()
            ));
        }
        wait_cached(&lab, 1, true, &format!("[{m}] after the route change"));
    }

    // 3. The internal NIC down, then up.
    {
        let log = lab.workdir.join("link.log");
        let stream = start_stream(
            &lab,
            &lab.ext.clone(),
            FIP1,
            &lab.inst1.clone(),
            "6103",
            &log,
        );
        thread::sleep(Duration::from_millis(500));
        let gw = lab.gw.clone();
        let t_down = now_us();
        sh(&gw, &["ip", "link", "set", "gw-int", "down"]);
        let (down_handled, _) = wait_handled(&follower, t_down, "epoch");
        thread::sleep(Duration::from_millis(300));
        let t_up = now_us();
        sh(&gw, &["ip", "link", "set", "gw-int", "up"]);
        let (handled, notified) = wait_handled(&follower, t_up, "epoch");
        thread::sleep(Duration::from_millis(700));
        let (received, total) = stop_stream(stream);
        let lost = lost_after(&received, total, handled);
        windows.push(format!(
            "link down: change -> handled {} µs; up: notified -> handled {} µs, change -> handled {} µs",
            down_handled.saturating_sub(t_down),
            handled - notified,
            handled.saturating_sub(t_up)
        ));
        if !lost.is_empty() {
            failures.push(format!(
                "link down/up: {} datagrams lost after the up was handled",
                lost.len()
            ));
        }
        wait_cached(&lab, 1, true, &format!("[{m}] after the link came back"));
    }

    follower.signal(libc::SIGTERM);
    let out = follower.finish(Duration::from_secs(10));
    if !out.stderr.contains("cache withdrawn") {
        failures.push(format!("the follower did not withdraw the cache:\n{out}"));
    }
    let st = lab.status().expect("status");
    if st["next_hops"]["following"].as_bool() != Some(false) {
        failures.push(format!("after the follower stopped: {}", st["next_hops"]));
    }
    for w in &windows {
        eprintln!("[{m}] window: {w}");
    }
    assert!(failures.is_empty(), "[{m}] {}", failures.join("\n"));
}

/// Send times (µs) in the datagrams of a `tcpdump -xx` listing.
fn stale_sends(dump: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut flush = |bytes: &mut Vec<u8>| {
        // Ethernet 14 + IPv4 20 + UDP 8, then magic (8), seq (8), send time (8).
        if bytes.len() >= 66 {
            out.push(u64::from_be_bytes(bytes[58..66].try_into().unwrap()));
        }
        bytes.clear();
    };
    for line in dump.lines() {
        let t = line.trim_start();
        if let Some(hex) = t
            .strip_prefix("0x")
            .and_then(|r| r.split_once(':'))
            .map(|(_, h)| h)
        {
            for word in hex.split_whitespace() {
                for i in (0..word.len()).step_by(2) {
                    if let Ok(b) = u8::from_str_radix(&word[i..(i + 2).min(word.len())], 16) {
                        bytes.push(b);
                    }
                }
            }
        } else {
            flush(&mut bytes);
        }
    }
    flush(&mut bytes);
    out
}

#[test]
fn the_cache_follows_mac_route_and_link_changes_xdp() {
    staleness(Mode::Xdp);
}

#[test]
fn the_cache_follows_mac_route_and_link_changes_tc() {
    staleness(Mode::Tc);
}
