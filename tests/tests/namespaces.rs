//! End-to-end tests of the floatip data plane in network namespaces, one
//! test per attach mode (xdp, xdp-generic, tc). Each test builds the
//! topology of `tests::netns` (ext host - router - gateway - bridge -
//! instances), attaches floatip to the gateway, maps 203.0.113.10 -> inst1
//! and 203.0.113.11 -> inst2, then runs every scenario, collecting failures
//! so that one broken scenario does not hide the others; the test fails at
//! the end listing each failed scenario with its evidence.
//!
//! Needs root and a built `floatip` (`cargo build --release -p
//! floatip-userspace`); run with
//! `cargo test --release -p tests --test namespaces -- --test-threads=1`.
//! `FLOATIP_BIN` overrides where the binary is looked up.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tests::netns::{
    self, EXT_IP, FIP1, FIP2, GW_INT_IP, INST1_IP, INST2_IP, Lab, Mode, RTR_EXT_IP, RTR_GW_IP,
    Spawned, exec,
};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");
const MIB: u64 = 1 << 20;

#[test]
fn namespaces_xdp() {
    run_mode(Mode::Xdp);
}

#[test]
fn namespaces_xdp_generic() {
    run_mode(Mode::XdpGeneric);
}

#[test]
fn namespaces_tc() {
    run_mode(Mode::Tc);
}

/// Outcomes of the scenarios of one mode.
struct Report {
    mode: Mode,
    results: Vec<(String, Result<()>)>,
}

impl Report {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) {
        let start = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(anyhow!("panicked: {msg}"))
        });
        let verdict = if r.is_ok() { "ok" } else { "FAILED" };
        eprintln!(
            "[{}] {name}: {verdict} ({:.1} s)",
            self.mode.as_str(),
            start.elapsed().as_secs_f64()
        );
        if let Err(e) = &r {
            eprintln!("{e:#}\n");
        }
        self.results.push((name.to_string(), r));
    }

    fn finish(self) {
        let total = self.results.len();
        let failed: Vec<String> = self
            .results
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| format!("=== {name} ===\n{e:#}")))
            .collect();
        if !failed.is_empty() {
            panic!(
                "{} of {total} scenarios failed in {} mode:\n\n{}",
                failed.len(),
                self.mode.as_str(),
                failed.join("\n\n")
            );
        }
    }
}

fn run_mode(mode: Mode) {
    netns::require_root();
    let _serial = netns::serialize();
    let m = mode.as_str();
    let lab = Lab::build(mode, &netns::floatip_binary(), Path::new(NETPROBE))
        .unwrap_or_else(|e| panic!("[{m}] cannot build the namespace topology: {e:#}"));

    let out = lab.attach();
    assert!(out.success(), "[{m}] floatip attach failed:\n{out}");
    for (floating, fixed) in [(FIP1, INST1_IP), (FIP2, INST2_IP)] {
        let out = lab.floatip(&["nat", "add", floating, fixed]);
        assert!(
            out.success(),
            "[{m}] floatip nat add {floating} {fixed} failed:\n{out}"
        );
    }

    let mut report = Report {
        mode,
        results: Vec::new(),
    };

    // Scenario 10 captures everything the hosts receive during scenarios 1-9.
    let cap_ext = lab.capture(&lab.ext, "eth0", "ext");
    let cap_inst1 = lab.capture(&lab.inst1, "eth0", "inst1");

    report.run("1 ping ext -> floating IPs", || s1_ping(&lab));
    report.run(
        "2 TCP 1 MiB echo, ext -> floating and instance -> ext",
        || s2_tcp(&lab),
    );
    report.run("3 UDP request/response ext -> floating", || s3_udp(&lab));
    report.run("4 4000-byte ping (fragments) ext -> floating", || {
        s4_fragments(&lab)
    });
    report.run("5 hairpin inst1 -> inst2's floating IP", || {
        s5_hairpin(&lab)
    });
    report.run("6 connected UDP sockets get ECONNREFUSED both ways", || {
        s6_refused(&lab)
    });
    report.run("7 traceroute inst1 -> ext", || s7_traceroute(&lab));
    report.run(
        "8 router ARP resolves the floating IP to gw-ext's MAC",
        || s8_arp(&lab),
    );
    report.run(
        "9 ext sees the floating IP as the source of inst1's TCP connection",
        || s9_source(&lab),
    );
    report.run(
        "10 receivers' captures have packets and no bad checksums",
        || {
            let ext = check_capture("ext eth0", cap_ext?.stop()?, FIP1);
            let inst1 = check_capture("inst1 eth0", cap_inst1?.stop()?, EXT_IP);
            match (ext, inst1) {
                (Ok(()), Ok(())) => Ok(()),
                (a, b) => Err(anyhow!(
                    "{}\n{}",
                    a.err().map_or(String::new(), |e| format!("{e:#}")),
                    b.err().map_or(String::new(), |e| format!("{e:#}"))
                )),
            }
        },
    );
    report.run(
        "anti-spoofing: a packet from ext with inst1's fixed source is dropped",
        || s_spoof(&lab),
    );
    report.run(
        "anti-spoofing: packets from inst1 with a pool source (another floating IP, a free one) are dropped",
        || s_spoof_internal(&lab),
    );
    report.run(
        "event log: `floatip log` shows the spoofed drop, with addresses",
        || s_event_log(&lab),
    );
    report.run(
        "11 status counters, forwarding after attach exited, clean detach",
        || s11_status_detach(&lab),
    );
    report.finish();
    // `lab` drops here: detach (if still attached), namespaces, directories.
}

// ---------------------------------------------------------------- helpers

/// `ping -c 3` from `ns` to `dst` with extra options; all replies must come back.
fn ping(ns: &str, dst: &str, extra: &[&str]) -> Result<()> {
    let mut argv = vec!["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2"];
    argv.extend_from_slice(extra);
    argv.push(dst);
    let out = exec(ns, &argv);
    ensure!(
        out.success() && out.stdout.contains(" 0% packet loss"),
        "ping {dst} from {ns} lost replies:\n{out}"
    );
    Ok(())
}

/// A TCP echo of `bytes` pseudo-random bytes from `client_ns` to
/// `dst:port`, served by netprobe in `server_ns`. Returns the server's line
/// ("peer=IP:PORT bytes=N fnv=HEX") and the client's ("ok ... server-saw=IP:PORT").
fn tcp_flow(
    lab: &Lab,
    server_ns: &str,
    client_ns: &str,
    dst: &str,
    port: u16,
    bytes: u64,
    seed: u64,
) -> Result<(String, String)> {
    let p = port.to_string();
    let server = lab.server(server_ns, &["tcp-serve", &p])?;
    let client = lab.netprobe(
        client_ns,
        &["tcp-send", dst, &p, &bytes.to_string(), &seed.to_string()],
    );
    let server = finish_server(server);
    ensure!(
        client.success(),
        "TCP client {client_ns} -> {dst}:{port} failed:\n{client}\nserver:\n{server}"
    );
    ensure!(
        server.success(),
        "TCP server in {server_ns} failed:\n{server}\nclient:\n{client}"
    );
    let want = format!("bytes={bytes} ");
    ensure!(
        server.stdout.contains(&want),
        "server did not receive {bytes} bytes:\n{server}"
    );
    Ok((
        server.stdout.trim().to_string(),
        client.stdout.trim().to_string(),
    ))
}

fn finish_server(s: Spawned) -> netns::Output {
    s.finish(Duration::from_secs(15))
}

/// `peer=IP:PORT` -> IP (also `server-saw=IP:PORT`).
fn peer_ip<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split(key).nth(1)?;
    rest.split(':').next()
}

// ---------------------------------------------------------------- scenarios

fn s1_ping(lab: &Lab) -> Result<()> {
    ping(&lab.ext, FIP1, &[])?;
    ping(&lab.ext, FIP2, &[])
}

fn s2_tcp(lab: &Lab) -> Result<()> {
    // ext -> floating: the instance must see the external client's own address.
    let (server, client) = tcp_flow(lab, &lab.inst1, &lab.ext, FIP1, 5001, MIB, 1)?;
    ensure!(
        peer_ip(&server, "peer=") == Some(EXT_IP),
        "inst1 should see the client as {EXT_IP}: server said {server:?}"
    );
    ensure!(
        client.contains(&format!("local={EXT_IP}:")),
        "unexpected client line {client:?}"
    );
    // instance -> ext.
    let (server, _) = tcp_flow(lab, &lab.ext, &lab.inst1, EXT_IP, 5002, MIB, 2)?;
    ensure!(
        peer_ip(&server, "peer=") == Some(FIP1),
        "ext should see inst1's connection from {FIP1}: server said {server:?}"
    );
    Ok(())
}

fn s3_udp(lab: &Lab) -> Result<()> {
    let server = lab.server(&lab.inst1, &["udp-echo", "5003", "1"])?;
    let client = lab.netprobe(&lab.ext, &["udp-ask", FIP1, "5003"]);
    let server = finish_server(server);
    ensure!(
        client.success(),
        "UDP ext -> {FIP1}:5003 got no answer:\n{client}\nserver:\n{server}"
    );
    ensure!(
        peer_ip(&server.stdout, "peer=") == Some(EXT_IP),
        "inst1 should see the datagram from {EXT_IP}:\n{server}"
    );
    Ok(())
}

fn s4_fragments(lab: &Lab) -> Result<()> {
    // 4000 bytes of payload over a 1500-byte MTU: three fragments each way.
    // `-M dont`: let the kernel fragment (no DF).
    ping(&lab.ext, FIP1, &["-s", "4000", "-M", "dont"])
}

fn s5_hairpin(lab: &Lab) -> Result<()> {
    ping(&lab.inst1, FIP2, &[])?;
    let (server, client) = tcp_flow(lab, &lab.inst2, &lab.inst1, FIP2, 5005, 256 * 1024, 5)?;
    ensure!(
        peer_ip(&server, "peer=") == Some(FIP1),
        "hairpin: inst2 should see inst1 as {FIP1} (not {INST1_IP}): server said {server:?}"
    );
    ensure!(
        client.contains(&format!("local={INST1_IP}:")),
        "unexpected client line {client:?}"
    );
    Ok(())
}

fn s6_refused(lab: &Lab) -> Result<()> {
    // The port-unreachable quotes the datagram as the far side saw it; the
    // socket only learns of it if the quote was translated back.
    let a = lab.netprobe(&lab.inst1, &["udp-refused", EXT_IP, "5999"]);
    let b = lab.netprobe(&lab.ext, &["udp-refused", FIP1, "5999"]);
    let mut errs = Vec::new();
    if !a.success() {
        errs.push(format!(
            "inst1 -> {EXT_IP}:5999 (closed) was not refused:\n{a}"
        ));
    }
    if !b.success() {
        errs.push(format!("ext -> {FIP1}:5999 (closed) was not refused:\n{b}"));
    }
    ensure!(errs.is_empty(), "{}", errs.join("\n"));
    Ok(())
}

/// Hop number -> the address on that line (None for "*").
fn hops(out: &str) -> Vec<(u32, Option<String>)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let n = w.next()?.parse().ok()?;
            let addr = w.next().filter(|a| *a != "*").map(str::to_string);
            Some((n, addr))
        })
        .collect()
}

fn s7_traceroute(lab: &Lab) -> Result<()> {
    let mut errs = Vec::new();
    // UDP probes (the default), then ICMP echo probes.
    for (what, extra) in [("UDP", &[][..]), ("ICMP", &["-I"][..])] {
        let mut argv = vec!["traceroute", "-n", "-q1", "-w1", "-m", "3"];
        argv.extend_from_slice(extra);
        argv.push(EXT_IP);
        let out = exec(&lab.inst1, &argv);
        let h = hops(&out.stdout);
        let at = |n: u32| h.iter().find(|(i, _)| *i == n).and_then(|(_, a)| a.clone());
        let mut bad = Vec::new();
        if !out.success() {
            bad.push("traceroute failed".to_string());
        }
        if at(1).as_deref() != Some(GW_INT_IP) {
            bad.push(format!("hop 1 should be the gateway {GW_INT_IP}"));
        }
        // The router's time-exceeded goes to the floating IP; inst1 only
        // matches it to its probe if the gateway translated the quote back.
        if !matches!(at(2).as_deref(), Some(a) if a == RTR_GW_IP || a == RTR_EXT_IP) {
            bad.push(format!(
                "hop 2 should be the router {RTR_GW_IP}/{RTR_EXT_IP}"
            ));
        }
        if at(3).as_deref() != Some(EXT_IP) {
            bad.push(format!("hop 3 should be the destination {EXT_IP}"));
        }
        if !bad.is_empty() {
            errs.push(format!("{what} traceroute: {}:\n{out}", bad.join("; ")));
        }
    }
    ensure!(errs.is_empty(), "{}", errs.join("\n"));
    Ok(())
}

fn s8_arp(lab: &Lab) -> Result<()> {
    let mac = lab.mac(&lab.gw, "gw-ext")?.to_lowercase();
    netns::run(
        netns::host_command(&["ip", "-n", &lab.rtr, "neigh", "flush", "dev", "r-gw"]),
        netns::EXEC_TIMEOUT,
    )
    .check()?;
    let before = exec(&lab.rtr, &["ip", "neigh", "show", FIP1, "dev", "r-gw"]);
    ping(&lab.rtr, FIP1, &[])?;
    let after = exec(&lab.rtr, &["ip", "neigh", "show", FIP1, "dev", "r-gw"]).check()?;
    ensure!(
        after
            .stdout
            .to_lowercase()
            .contains(&format!("lladdr {mac}")),
        "the router's neighbour entry for {FIP1} should be gw-ext's MAC {mac}:\n{after}\n(before the ping: {})",
        before.stdout.trim()
    );
    Ok(())
}

fn s9_source(lab: &Lab) -> Result<()> {
    let (server, _) = tcp_flow(lab, &lab.ext, &lab.inst1, EXT_IP, 5009, 64 * 1024, 9)?;
    ensure!(
        peer_ip(&server, "peer=") == Some(FIP1),
        "ext must see inst1's connection from {FIP1}, not {INST1_IP}: server said {server:?}"
    );
    Ok(())
}

/// Whether a checksum complaint sits in the quote of a time-exceeded error
/// the gateway's kernel sent itself (the lines before it say so). floatip
/// leaves a TTL-1 packet untranslated for the kernel, which quotes the
/// sender's bytes as they arrived; with tx checksum offload on (tc mode)
/// the sender's UDP checksum is still the partial seed. Not floatip's bytes.
fn quoted_by_gateway_kernel(before: &[&str]) -> bool {
    before
        .iter()
        .any(|l| l.contains(&format!("{GW_INT_IP} > ")) && l.contains("ICMP time exceeded"))
}

/// Decoded capture (`tcpdump -r -vvv -n`) of a receiver: non-empty, has
/// packets involving `expect_addr`, and no checksum complaint.
fn check_capture(what: &str, text: String, expect_addr: &str) -> Result<()> {
    ensure!(!text.trim().is_empty(), "{what}: the capture is empty");
    ensure!(
        text.contains(expect_addr),
        "{what}: no packet involving {expect_addr} in the capture:\n{text}"
    );
    // tcpdump's verdicts: "cksum 0x1234 (incorrect -> 0x5678)" (TCP/UDP),
    // "bad cksum 1234!" (IPv4 header, also of quoted headers inside ICMP
    // errors), "wrong icmp cksum" (ICMP).
    let all: Vec<&str> = text.lines().collect();
    let bad: Vec<&str> = all
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            (l.contains("incorrect")
                || l.contains("bad cksum")
                || l.contains("wrong")
                || l.contains("bad udp cksum"))
                && !quoted_by_gateway_kernel(&all[i.saturating_sub(3)..*i])
        })
        .map(|(_, l)| *l)
        .collect();
    if !bad.is_empty() {
        // Show each bad line with the line before it (the IP header of that packet).
        let lines: Vec<&str> = text.lines().collect();
        let mut shown = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if bad.contains(l) {
                if i > 0 {
                    shown.push(lines[i - 1]);
                }
                shown.push(l);
            }
            if shown.len() > 40 {
                break;
            }
        }
        bail!(
            "{what}: {} line(s) with bad checksums out of {} lines, e.g.:\n{}",
            bad.len(),
            lines.len(),
            shown.join("\n")
        );
    }
    Ok(())
}

fn s_spoof(lab: &Lab) -> Result<()> {
    let before = lab.counter("dropped_spoofed")?;
    let out = lab.netprobe(&lab.ext, &["spoof", INST1_IP, FIP1, "5010", "5"]);
    ensure!(out.success(), "sending spoofed datagrams failed:\n{out}");
    thread::sleep(Duration::from_millis(300));
    let after = lab.counter("dropped_spoofed")?;
    ensure!(
        after > before,
        "dropped_spoofed did not increase ({before} -> {after}) after 5 datagrams {INST1_IP} -> {FIP1} from ext; \
         status: {}",
        lab.status()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| format!("{e:#}"))
    );
    Ok(())
}

fn s_event_log(lab: &Lab) -> Result<()> {
    let mut log = lab.floatip_spawn(&["log", "--seconds", "20"])?;
    log.wait_for("following", Duration::from_secs(10))?;
    let out = lab.netprobe(&lab.ext, &["spoof", INST1_IP, FIP1, "5011", "3"]);
    ensure!(out.success(), "sending spoofed datagrams failed:\n{out}");
    // Named by the interface it arrived on, not its ifindex.
    let want = format!("gw-ext: dropped, spoofed source: {INST1_IP} -> {FIP1}");
    let seen = log.wait_for(&want, Duration::from_secs(5));
    // Ctrl-C: the log switches the programs' logging off and exits 0.
    log.signal(libc::SIGINT);
    let out = log.finish(Duration::from_secs(10));
    seen?;
    ensure!(out.success(), "`floatip log` failed after SIGINT:\n{out}");
    Ok(())
}

/// The internal side drops a packet whose source lies in a floating IP
/// pool but is not an associated fixed IP: an instance forging another
/// instance's floating IP, or an unallocated one. Pools come from the
/// control plane (the scenarios above map with `nat add` only), so this one
/// creates a pool over the floating IPs and deletes it again.
fn s_spoof_internal(lab: &Lab) -> Result<()> {
    const FREE_IN_POOL: &str = "203.0.113.15";
    let out = lab.floatip(&[
        "pool",
        "create",
        "spoofcheck",
        "--range",
        "203.0.113.10-203.0.113.20",
    ]);
    ensure!(out.success(), "pool create failed:\n{out}");
    let result = (|| {
        let cap = lab.capture(&lab.ext, "eth0", "spoof-internal")?;
        let before = lab.counter("dropped_spoofed")?;
        for src in [FIP2, FREE_IN_POOL] {
            let out = lab.netprobe(&lab.inst1, &["spoof", src, EXT_IP, "5011", "5"]);
            ensure!(out.success(), "sending from {src} failed:\n{out}");
        }
        // Positive control: the same datagram from inst1's own address
        // leaves translated, so the capture would show the forged ones.
        let out = lab.netprobe(&lab.inst1, &["spoof", INST1_IP, EXT_IP, "5011", "2"]);
        ensure!(out.success(), "sending from {INST1_IP} failed:\n{out}");
        thread::sleep(Duration::from_millis(300));
        let after = lab.counter("dropped_spoofed")?;
        let text = cap.stop()?;
        let arrived = |src: &str| text.contains(&format!("{src}.40000 > {EXT_IP}.5011:"));
        ensure!(
            arrived(FIP1),
            "the control datagram from {INST1_IP} did not reach ext as {FIP1} (dropped_spoofed {before} -> {after}; {}):\n{text}",
            lab.status().map(|s| s.to_string()).unwrap_or_default()
        );
        for src in [FIP2, FREE_IN_POOL] {
            ensure!(
                !arrived(src),
                "a datagram forged from {src} reached ext:\n{text}"
            );
        }
        ensure!(
            after - before >= 10,
            "dropped_spoofed rose by {} ({before} -> {after}), not by the 10 datagrams inst1 forged",
            after - before
        );
        Ok(())
    })();
    let out = lab.floatip(&["pool", "delete", "spoofcheck"]);
    ensure!(out.success(), "pool delete failed:\n{out}");
    result
}

fn s11_status_detach(lab: &Lab) -> Result<()> {
    let m = lab.mode;
    let st = lab.status()?;
    let counter = |n: &str| st["counters"][n].as_u64().unwrap_or(0);
    ensure!(
        counter("translated") > 0,
        "no translated packets counted: {st}"
    );
    ensure!(counter("arp_replies") > 0, "no ARP replies counted: {st}");

    // `floatip attach` exited long before any of the traffic above; one
    // more exchange after reading the counters shows it still forwards.
    ping(&lab.ext, FIP1, &[]).context("forwarding after attach exited")?;

    // Positive control: the programs are visible where the checks below look.
    let link = |ifname: &str| exec(&lab.gw, &["ip", "-d", "link", "show", "dev", ifname]);
    let tcx = |ifname: &str| lab.netprobe(&lab.gw, &["tcx-count", ifname]);
    for ifname in ["gw-ext", "gw-int"] {
        if m.is_xdp() {
            let out = link(ifname).check()?;
            ensure!(
                out.stdout.contains("prog/xdp"),
                "{ifname} shows no XDP program while attached:\n{out}"
            );
        } else {
            // iproute2 does not show TCX and this bpftool (v7.1) predates it:
            // ask the kernel directly (BPF_PROG_QUERY on BPF_TCX_INGRESS).
            let out = tcx(ifname).check()?;
            ensure!(
                !out.stdout.contains("ingress=0 "),
                "{ifname} has no TCX ingress program while attached:\n{out}"
            );
        }
    }

    let out = lab.detach();
    ensure!(out.success(), "floatip detach failed:\n{out}");
    ensure!(
        !lab.bpffs.exists(),
        "{} still exists after detach: {:?}",
        lab.bpffs.display(),
        list_dir(&lab.bpffs)
    );
    for ifname in ["gw-ext", "gw-int"] {
        let out = link(ifname).check()?;
        ensure!(
            !out.stdout.contains("prog/xdp")
                && !out.stdout.contains("xdpgeneric")
                && !out.stdout.contains(" xdp"),
            "{ifname} still has an XDP program after detach:\n{out}"
        );
        let out = tcx(ifname).check()?;
        ensure!(
            out.stdout.trim() == "ingress=0 egress=0",
            "{ifname} still has TCX programs after detach:\n{out}"
        );
    }
    Ok(())
}

fn list_dir(p: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                v.push(e.path().display().to_string());
                stack.push(e.path());
            }
        }
    }
    v
}
