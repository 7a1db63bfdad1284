//! Restarts, upgrades and privileges, on the namespace topology of
//! `tests::netns` with the real `floatip` binary.
//!
//! - `zero_loss_xdp`, `zero_loss_xdp_generic`, `zero_loss_tc`: a
//!   sequence-numbered UDP stream (20,000 datagrams/s, ext -> a floating IP ->
//!   inst1) runs while floatip is attached again (programs replaced through
//!   the pinned links), `status` runs, a thousand associate/disassociate
//!   operations change other addresses, and an unrelated interface is
//!   detached and attached again. The receiver must see every datagram once
//!   and in order; losses are attributed (socket, interfaces, data plane).
//! - `reboot_restores_from_database`: pins and programs vanish without
//!   `floatip detach` (as in a reboot); `attach` brings back every pool
//!   prefix and association from the database, and traffic flows again.
//! - `other_layout_version_is_refused`: pinned maps of an older or newer
//!   layout version make `attach`, `status` and the association commands
//!   fail with one line naming both versions, changing nothing.
//! - `shared_counters_are_kept_across_attaches`: maps attached with shared
//!   counters keep them through a later attach, `nat stats` counts pings
//!   exactly, and an attach asking for per-CPU counters is refused, changing nothing.
//! - `unprivileged_user_is_refused`: as nobody, reading and mutating
//!   commands fail with one permission line and change nothing; the
//!   database is 0600 in a 0700 directory, the pin directory 0700.
//!
//! Needs root and a built `floatip` (`cargo build --release --workspace
//! --exclude floatip-ebpf --bins`); `FLOATIP_BIN` overrides where it is
//! looked up, `FLOATIP_TEST_MODE` the mode of the single-mode tests.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use floatip_common::{MAP_LAYOUT_VERSION, Meta, maps as map_names};
use serde_json::Value;
use tests::{
    netns::{self, EXT_IP, FIP1, FIP2, INST1_IP, INST2_IP, Lab, Mode, Output, exec, str_field},
    snapshot::{Snapshot, db_view, pinned_links},
};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

/// The stream: port, datagrams per second, and the least it runs.
const STREAM_PORT: &str = "6000";
const STREAM_RATE: u64 = 20_000;
const STREAM_MIN: Duration = Duration::from_secs(10);
/// Associate/disassociate operations during the stream.
const CHURN_OPS: usize = 1000;
/// Floating IPs those operations use (a pool of their own), and the
/// concurrent clients issuing them (each with a share of the addresses).
const CHURN_FIPS: usize = 20;
const CHURN_WORKERS: usize = 4;
/// The unrelated interface (a veth pair inside the gateway namespace).
const EXTRA: &str = "gw-x";
const EXTRA_PEER: &str = "gw-xp";

// ---------------------------------------------------------------- helpers

fn build(mode: Mode) -> Lab {
    Lab::build(mode, &netns::floatip_binary(), Path::new(NETPROBE))
        .unwrap_or_else(|e| panic!("cannot build the namespace topology: {e:#}"))
}

/// Pool `public` (203.0.113.10-20, behind gw-ext), `allocate`d addresses
/// and `associate`d pairs.
fn public_pool(lab: &Lab, allocate: &[&str], associate: &[(&str, &str)]) {
    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    for fip in allocate {
        lab.ok(&["ip", "create", "public", "--address", fip]);
    }
    for (fip, fixed) in associate {
        lab.ok(&["ip", "associate", fip, fixed]);
    }
}

/// The ACTIVE (floating, fixed) pairs of the database (`ip list`), sorted.
fn db_pairs(lab: &Lab) -> Vec<(String, String)> {
    let v = lab.json(&["ip", "list", "--status", "ACTIVE"]);
    let mut pairs: Vec<_> = v
        .as_array()
        .unwrap_or_else(|| panic!("ip list is not an array: {v}"))
        .iter()
        .map(|r| {
            (
                str_field(r, "floating_ip_address"),
                str_field(r, "fixed_ip_address"),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

/// Interface name -> program id, from `floatip status`.
fn program_ids(status: &Value) -> BTreeMap<String, u64> {
    status["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| (str_field(i, "name"), i["program_id"].as_u64().unwrap_or(0)))
        .collect()
}

/// `nat stats FLOATING`: packets into the floating IP so far.
fn in_packets(lab: &Lab, floating: &str) -> u64 {
    let v = lab.json(&["nat", "stats", floating]);
    v[0]["in_packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no in_packets in {v}"))
}

fn counters(lab: &Lab) -> BTreeMap<String, u64> {
    let st = lab.json(&["status"]);
    st["counters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// `after - before` for the keys that changed.
fn changed(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0);
            (*a != b).then(|| format!("{k} +{}", a.wrapping_sub(b)))
        })
        .collect()
}

/// `key=value` of a result line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn num(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.parse().ok()
}

/// Whether `ifname` in `ns` has any floatip program attached (XDP or TCX).
fn has_program(lab: &Lab, ns: &str, ifname: &str) -> bool {
    let link = exec(ns, &["ip", "-d", "link", "show", "dev", ifname]);
    let tcx = lab.netprobe(ns, &["tcx-count", ifname]);
    link.stdout.contains("prog/xdp")
        || link.stdout.contains("xdpgeneric")
        || !tcx.stdout.contains("ingress=0 ")
}

/// Everything one error case must satisfy: non-zero exit, exactly one
/// line on stderr containing each of `expect`, nothing on stdout.
fn refused(what: &str, out: &Output, expect: &[&str]) -> Result<(), String> {
    let mut problems = Vec::new();
    if out.timed_out || out.status.is_none() {
        problems.push("did not finish".to_string());
    } else if out.success() {
        problems.push("exited 0".to_string());
    }
    let stderr = out.stderr.trim_end_matches('\n');
    let lines = stderr.lines().count();
    if lines != 1 {
        problems.push(format!("{lines} lines on stderr instead of 1"));
    }
    for e in expect {
        if !stderr.to_lowercase().contains(&e.to_lowercase()) {
            problems.push(format!("stderr does not mention {e:?}"));
        }
    }
    if !out.stdout.is_empty() {
        problems.push("printed on stdout".to_string());
    }
    eprintln!("  {what}: {}", stderr.lines().next().unwrap_or(""));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}\n{out}", problems.join("; ")))
    }
}

/// Reading and mutating commands that must be refused as a whole.
fn refusal_cases<'a>(attach: &[&'a str]) -> Vec<(&'static str, Vec<&'a str>)> {
    vec![
        ("attach", attach.to_vec()),
        ("status", vec!["status"]),
        ("nat list", vec!["nat", "list"]),
        (
            "pool create",
            vec![
                "pool",
                "create",
                "p2",
                "--range",
                "203.0.113.40-203.0.113.45",
            ],
        ),
        ("ip associate", vec!["ip", "associate", FIP2, INST2_IP]),
        ("ip disassociate", vec!["ip", "disassociate", FIP1]),
    ]
}

// ---------------------------------------------------------------- zero loss

#[test]
fn zero_loss_xdp() {
    zero_loss(Mode::Xdp);
}

#[test]
fn zero_loss_xdp_generic() {
    zero_loss(Mode::XdpGeneric);
}

#[test]
fn zero_loss_tc() {
    zero_loss(Mode::Tc);
}

/// The receiver's result line, parsed.
struct Received {
    line: String,
    total: u64,
    unique: u64,
    missing: u64,
    duplicates: u64,
    reordered: u64,
    rxq_ovfl: u64,
    end_marker: bool,
}

impl Received {
    fn parse(out: &str) -> Option<Received> {
        let line = out.lines().find(|l| l.starts_with("total="))?.to_string();
        Some(Received {
            total: num(&line, "total")?,
            unique: num(&line, "unique")?,
            missing: num(&line, "missing")?,
            duplicates: num(&line, "duplicates")?,
            reordered: num(&line, "reordered")?,
            rxq_ovfl: num(&line, "rxq_ovfl")?,
            end_marker: field(&line, "end_marker") == Some("true"),
            line,
        })
    }
}

fn zero_loss(mode: Mode) {
    netns::require_root();
    let _serial = netns::serialize();
    let m = mode.as_str();
    let started = Instant::now();
    let mut lab = build(mode);
    lab.veth(&lab.gw.clone(), EXTRA, &lab.gw.clone(), EXTRA_PEER)
        .unwrap_or_else(|e| panic!("cannot add {EXTRA}: {e:#}"));
    for ifname in [EXTRA, EXTRA_PEER] {
        netns::assert_success(&exec(&lab.gw, &["ip", "link", "set", ifname, "up"]));
    }
    let attach = lab.attach_args(&[EXTRA]);
    lab.ok(&attach);
    public_pool(&lab, &[FIP1], &[(FIP1, INST1_IP)]);
    lab.pool_create("churn", "203.0.113.128/27");
    let churn: Vec<String> = (0..CHURN_FIPS)
        .map(|_| str_field(&lab.json(&["ip", "create", "churn"]), "floating_ip_address"))
        .collect();
    let setup = started.elapsed();

    // The stream: receiver on inst1, sender on ext, to the floating IP.
    let watchdog = Duration::from_secs(300);
    let mut receiver = lab
        .netprobe_background(&lab.inst1, &["udp-sink", STREAM_PORT], watchdog)
        .expect("start udp-sink");
    receiver
        .wait_for("listening", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before_counters = counters(&lab);
    let before_in = in_packets(&lab, FIP1);
    let before_drops = lab.drop_counters().expect("drop counters");
    let before_rcvbuf = netns::snmp(&lab.inst1, "Udp", "RcvbufErrors").expect("snmp");
    let rate = STREAM_RATE.to_string();
    let mut sender = lab
        .netprobe_background(
            &lab.ext,
            &["udp-stream", FIP1, STREAM_PORT, &rate],
            watchdog,
        )
        .expect("start udp-stream");
    let stream_start = Instant::now();
    if let Err(e) = receiver.wait_for("receiving from", Duration::from_secs(15)) {
        panic!(
            "[{m}] the stream does not arrive: {e:#}\nsender: {}{}",
            sender.stdout_so_far(),
            sender.stderr_so_far()
        );
    }

    let mut failures: Vec<String> = Vec::new();
    let mut timings: Vec<String> = Vec::new();
    let mut fail = |what: String| {
        eprintln!("[{m}] FAILED: {what}");
        failures.push(what);
    };

    // 1. Attach again: every program replaced in place through its link.
    let t = Instant::now();
    let ids_before = program_ids(&lab.json(&["status"]));
    let links_before = pinned_links(&lab);
    let out = lab.floatip(&attach);
    let ids_after = program_ids(&lab.json(&["status"]));
    let links_after = pinned_links(&lab);
    timings.push(format!("attach again {:.2} s", t.elapsed().as_secs_f64()));
    if !out.success() {
        fail(format!("attach again failed:\n{out}"));
    }
    for ifname in ["gw-ext", "gw-int", EXTRA] {
        let (b, a) = (ids_before.get(ifname), ids_after.get(ifname));
        if b.is_none() || a.is_none() || a == b || a == Some(&0) {
            fail(format!(
                "attach again did not replace the program of {ifname}: {b:?} -> {a:?}"
            ));
        }
    }

    // The same links (BPF_LINK_UPDATE), not new ones: one per NIC and the external NIC's
    // egress link (`<ifindex>_egress`); the send-drop tracepoint's link (`send-drops`, no
    // `<ifindex>_`) stays as it is.
    let link_ids = |links: &BTreeMap<String, Value>| -> Vec<(String, Value)> {
        links
            .iter()
            .map(|(k, v)| (k.clone(), v["id"].clone()))
            .collect()
    };
    let nic_links = links_before.keys().filter(|k| k.contains('_')).count();
    if nic_links != 4 || link_ids(&links_before) != link_ids(&links_after) {
        fail(format!(
            "attach again should update the 4 pinned links in place: {:?} -> {:?}",
            link_ids(&links_before),
            link_ids(&links_after)
        ));
    }

    // 2. status, as an operator reads it.
    let out = lab.floatip(&["status"]);
    if !(out.success() && out.stdout.contains("gw-ext") && out.stdout.contains("translated")) {
        fail(format!("status failed:\n{out}"));
    }

    // 3. A thousand associate/disassociate operations on other addresses,
    // from CHURN_WORKERS concurrent clients (as an API server would issue
    // them), each with its own floating IPs and fixed IPs: rounds that
    // associate each of its floating IPs, then disassociate them.
    let t = Instant::now();
    let per_worker = CHURN_FIPS / CHURN_WORKERS;
    let rounds = CHURN_OPS.div_ceil(2 * CHURN_FIPS);
    let churned: Vec<(usize, usize, Vec<String>)> = thread::scope(|s| {
        let workers: Vec<_> = churn
            .chunks(per_worker)
            .enumerate()
            .map(|(w, fips)| {
                let lab = &lab;
                s.spawn(move || {
                    let (mut associated, mut disassociated, mut errors) = (0, 0, Vec::new());
                    for round in 0..rounds {
                        for (k, fip) in fips.iter().enumerate() {
                            let fixed = format!(
                                "10.0.0.{}",
                                100 + w * per_worker + (k + round) % per_worker
                            );
                            let out = lab.floatip(&["ip", "associate", fip, &fixed]);
                            match out.success() {
                                true => associated += 1,
                                false => errors.push(out.to_string()),
                            }
                        }
                        for fip in fips {
                            let out = lab.floatip(&["ip", "disassociate", fip]);
                            match out.success() {
                                true => disassociated += 1,
                                false => errors.push(out.to_string()),
                            }
                        }
                        if !errors.is_empty() {
                            break;
                        }
                    }
                    (associated, disassociated, errors)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().expect("a churn worker panicked"))
            .collect()
    });
    let associated: usize = churned.iter().map(|c| c.0).sum();
    let disassociated: usize = churned.iter().map(|c| c.1).sum();
    let op_failures: Vec<&String> = churned.iter().flat_map(|c| &c.2).collect();
    timings.push(format!(
        "{associated} associate + {disassociated} disassociate ({CHURN_WORKERS} clients) {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    if !op_failures.is_empty() || associated + disassociated < CHURN_OPS {
        fail(format!(
            "{associated} associations and {disassociated} disassociations succeeded of {CHURN_OPS}; \
             {} failed, first:\n{}",
            op_failures.len(),
            op_failures.first().map_or("-", |s| s.as_str())
        ));
    }
    let pairs = lab.nat_pairs();
    let want = vec![(FIP1.to_string(), INST1_IP.to_string())];
    if pairs != want || db_pairs(&lab) != want {
        fail(format!(
            "after the churn the maps hold {pairs:?} and the database {:?}, not {want:?}",
            db_pairs(&lab)
        ));
    }

    // 4. Detach the unrelated interface, then attach it again.
    let t = Instant::now();
    let out = lab.floatip(&["detach", "--interface", EXTRA]);
    let detached_ids = program_ids(&lab.json(&["status"]));
    if !out.success() || detached_ids.contains_key(EXTRA) || has_program(&lab, &lab.gw, EXTRA) {
        fail(format!(
            "detach --interface {EXTRA} left it attached ({detached_ids:?}):\n{out}"
        ));
    }
    let out = lab.floatip(&attach);
    let reattached = program_ids(&lab.json(&["status"]));
    timings.push(format!(
        "detach + attach {EXTRA} {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    if !out.success() || reattached.get(EXTRA).is_none_or(|id| *id == 0) {
        fail(format!(
            "attach did not bring {EXTRA} back ({reattached:?}):\n{out}"
        ));
    }

    // The stream runs at least STREAM_MIN, and past every operation.
    let ops_done = stream_start.elapsed();
    if let Some(rest) = STREAM_MIN.checked_sub(ops_done) {
        thread::sleep(rest);
    }
    if !sender.running() || !receiver.running() {
        fail(format!(
            "the stream ended before the operations did:\nsender: {}{}\nreceiver: {}{}",
            sender.stdout_so_far(),
            sender.stderr_so_far(),
            receiver.stdout_so_far(),
            receiver.stderr_so_far()
        ));
    }
    sender.signal(libc::SIGTERM);
    let sent_out = sender.finish(Duration::from_secs(15));
    // The sink stops at the end marker (or 5 s after the last datagram).
    let recv_out = receiver.finish(Duration::from_secs(20));

    let after_in = in_packets(&lab, FIP1);
    let after_counters = counters(&lab);
    let after_drops = lab.drop_counters().expect("drop counters");
    let after_rcvbuf = netns::snmp(&lab.inst1, "Udp", "RcvbufErrors").expect("snmp");

    let sent = sent_out
        .stdout
        .lines()
        .find_map(|l| num(l, "sent"))
        .unwrap_or_else(|| panic!("[{m}] the sender printed no count:\n{sent_out}"));
    let got = Received::parse(&recv_out.stdout)
        .unwrap_or_else(|| panic!("[{m}] the receiver printed no result:\n{recv_out}"));
    let stream_secs = stream_start.elapsed().as_secs_f64();
    let delta = |k: &str| {
        after_counters.get(k).copied().unwrap_or(0) - before_counters.get(k).copied().unwrap_or(0)
    };
    let rcvbuf_errors = after_rcvbuf - before_rcvbuf;
    let path_drops = changed(&before_drops, &after_drops);
    eprintln!(
        "[{m}] setup {:.1} s; stream {stream_secs:.1} s, operations done after {:.1} s: {}",
        setup.as_secs_f64(),
        ops_done.as_secs_f64(),
        timings.join(", ")
    );
    eprintln!("[{m}] sender: {}", sent_out.stdout.trim());
    eprintln!(
        "[{m}] receiver: lost {} reordered {} duplicated {} of {sent} sent ({})",
        got.missing + sent.saturating_sub(got.total),
        got.reordered,
        got.duplicates,
        got.line
    );
    eprintln!(
        "[{m}] data plane: {FIP1} in_packets +{}, translated +{}, counters changed: {}; \
         Udp RcvbufErrors on inst1 +{rcvbuf_errors}; interface drops: {}",
        after_in - before_in,
        delta("translated"),
        changed(&before_counters, &after_counters).join(", "),
        if path_drops.is_empty() {
            "none".to_string()
        } else {
            path_drops.join(", ")
        }
    );

    if !sent_out.success() || !recv_out.success() {
        fail(format!(
            "the stream's processes failed:\n{sent_out}\n{recv_out}"
        ));
    }
    if sent < STREAM_RATE {
        fail(format!(
            "the sender sent only {sent} datagrams in {stream_secs:.1} s"
        ));
    }
    if field(&got.line, "peer").and_then(|p| p.split(':').next()) != Some(EXT_IP) {
        fail(format!(
            "inst1 should see the stream from {EXT_IP}: {}",
            got.line
        ));
    }
    // Not vacuous: the stream went through the programs, every datagram.
    if after_in - before_in < sent || delta("translated") < sent {
        fail(format!(
            "only {} of {sent} datagrams were counted for {FIP1} (translated +{}): \
             the rest did not pass through the programs",
            after_in - before_in,
            delta("translated")
        ));
    }
    let lost = got.missing + sent.saturating_sub(got.total);
    if lost > 0 || got.duplicates > 0 || got.reordered > 0 || got.unique != sent || !got.end_marker
    {
        let receiver_side = if got.rxq_ovfl > 0 || rcvbuf_errors > 0 {
            format!(
                "the RECEIVER dropped {} (socket drop count {}, Udp RcvbufErrors +{rcvbuf_errors}): \
                 a receiver that cannot keep up, not floatip, but the test cannot tell the rest apart",
                got.rxq_ovfl.max(rcvbuf_errors),
                got.rxq_ovfl
            )
        } else {
            "the receiving socket dropped nothing".to_string()
        };
        fail(format!(
            "the stream through {FIP1} was not delivered exactly once and in order: \
             {lost} lost, {} duplicated, {} reordered of {sent} (end marker seen: {}).\n\
             {receiver_side}; interface drop counters changed: {path_drops:?}; \
             data-plane counters changed: {:?}\nreceiver: {}",
            got.duplicates,
            got.reordered,
            got.end_marker,
            changed(&before_counters, &after_counters),
            got.line
        ));
    }
    assert!(
        failures.is_empty(),
        "[{m}] {} check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!(
        "[{m}] zero loss under restarts: ok ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- reboot

/// `ping -c 3` from `ns`: whether every reply came back.
fn ping(ns: &str, dst: &str) -> Output {
    exec(ns, &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst])
}

fn ping_ok(out: &Output) -> bool {
    out.success() && out.stdout.contains(" 0% packet loss")
}

/// The pool prefixes in the maps, read through the data-plane library.
fn pool_prefixes(lab: &Lab) -> Vec<(std::net::Ipv4Addr, u8, bool)> {
    let dp = floatip::dataplane::Dataplane::open(&lab.bpffs)
        .unwrap_or_else(|e| panic!("cannot open the maps: {e:#}"));
    let mut v: Vec<_> = dp
        .pool_prefixes()
        .expect("pool prefixes")
        .into_iter()
        .map(|(a, l, x, _)| (a, l, x))
        .collect();
    v.sort();
    v
}

#[test]
fn reboot_restores_from_database() {
    netns::require_root();
    let _serial = netns::serialize();
    let started = Instant::now();
    let mode = netns::mode_from_env();
    let lab = build(mode);
    lab.ok(&lab.attach_args(&[]));
    public_pool(&lab, &[FIP1, FIP2], &[(FIP1, INST1_IP), (FIP2, INST2_IP)]);
    lab.ok(&[
        "pool",
        "create",
        "more",
        "--range",
        "203.0.113.64/28",
        "--exclude",
        "203.0.113.70",
        "--external",
        "gw-ext",
    ]);
    for i in 0..4 {
        let fip = str_field(&lab.json(&["ip", "create", "more"]), "floating_ip_address");
        lab.ok(&["ip", "associate", &fip, &format!("10.0.0.{}", 100 + i)]);
    }
    // Allocated, not associated: must stay so.
    lab.ok(&["ip", "create", "more"]);
    let pairs = lab.nat_pairs();
    assert_eq!(pairs.len(), 6, "6 associations in the maps: {pairs:?}");
    assert_eq!(
        pairs,
        db_pairs(&lab),
        "maps and database agree before the reboot"
    );
    let prefixes = pool_prefixes(&lab);
    assert!(
        prefixes.iter().any(|p| p.2),
        "the excluded address is a hole in the trie: {prefixes:?}"
    );
    let db = db_view(&lab);
    let out = ping(&lab.ext, FIP1);
    assert!(ping_ok(&out), "before the reboot:\n{out}");

    // The reboot: no detach; every pin goes, and with the last reference
    // to them the links (so the programs) and the maps.
    fs::remove_dir_all(&lab.bpffs)
        .unwrap_or_else(|e| panic!("cannot remove {}: {e}", lab.bpffs.display()));
    // A link is released asynchronously once its pin goes: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["gw-ext", "gw-int"]
        .iter()
        .any(|i| has_program(&lab, &lab.gw, i))
    {
        assert!(
            Instant::now() < deadline,
            "the programs stay attached after their pins are gone:\n{}",
            exec(&lab.gw, &["ip", "-d", "link", "show"]).stdout
        );
        thread::sleep(Duration::from_millis(100));
    }
    let out = lab.floatip(&["nat", "list"]);
    assert!(
        !out.success() && out.stderr.contains("not attached"),
        "nat list must say the data plane is not attached:\n{out}"
    );
    let out = exec(
        &lab.ext,
        &["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", FIP1],
    );
    assert!(
        !out.stdout.contains("bytes from"),
        "{FIP1} must not answer without the programs:\n{out}"
    );

    let out = lab.ok(&lab.attach_args(&[]));
    assert!(
        out.stdout.contains("6 associations loaded"),
        "attach should report restoring 6 associations:\n{out}"
    );
    assert_eq!(
        lab.nat_pairs(),
        pairs,
        "every association is back in the maps"
    );
    assert_eq!(db_pairs(&lab), pairs, "the database still agrees");
    assert_eq!(
        pool_prefixes(&lab),
        prefixes,
        "every pool prefix and hole is back"
    );
    assert_eq!(db_view(&lab), db, "the database is unchanged by the reboot");
    let st = lab.json(&["status"]);
    assert_eq!(st["associations"], 6, "{st}");

    let mut failures = Vec::new();
    for fip in [FIP1, FIP2] {
        let out = ping(&lab.ext, fip);
        if !ping_ok(&out) {
            failures.push(format!("ping {fip} after the reboot:\n{out}"));
        }
    }
    let srv = lab
        .server(&lab.inst2, &["udp-echo", "5200", "1"])
        .expect("start udp-echo");
    let ask = lab.netprobe(&lab.ext, &["udp-ask", FIP2, "5200"]);
    let srv = srv.finish(Duration::from_secs(15));
    if !(ask.success() && srv.stdout.contains(&format!("peer={EXT_IP}:"))) {
        failures.push(format!("UDP ext -> {FIP2} after the reboot:\n{ask}\n{srv}"));
    }
    let translated = lab.counter("translated").unwrap_or(0);
    if translated == 0 {
        failures.push("no packet was translated after the reboot".to_string());
    }
    assert!(
        failures.is_empty(),
        "[{}] traffic after the reboot:\n{}",
        mode.as_str(),
        failures.join("\n\n")
    );
    eprintln!("[reboot] ok ({:.1} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- layout versions

/// Writes `version` into the pinned META record, keeping its other fields.
fn set_layout_version(lab: &Lab, version: u32) {
    let path = lab.bpffs.join("maps").join(map_names::META);
    let data =
        MapData::from_pin(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut meta: Array<MapData, Meta> =
        Array::try_from(aya::maps::Map::Array(data)).expect("META is an array of Meta");
    let mut m = meta.get(&0, 0).expect("META[0]");
    m.layout_version = version;
    meta.set(0, m, 0).expect("write META[0]");
}

#[test]
fn other_layout_version_is_refused() {
    netns::require_root();
    let _serial = netns::serialize();
    let started = Instant::now();
    let mode = Mode::XdpGeneric;
    let lab = build(mode);
    let attach = lab.attach_args(&[]);
    lab.ok(&attach);
    public_pool(&lab, &[FIP1, FIP2], &[(FIP1, INST1_IP)]);

    let current = MAP_LAYOUT_VERSION;
    let mut versions = vec![0, current.saturating_sub(1), current + 1];
    versions.retain(|v| *v != current);
    versions.dedup();
    let mut failures = Vec::new();
    for bad in versions {
        eprintln!("[layout] pinned version {bad}, this floatip {current}:");
        set_layout_version(&lab, bad);
        let before = Snapshot::take(&lab);
        let (bad_s, cur_s) = (bad.to_string(), current.to_string());
        let expect = ["layout version", &bad_s, &cur_s];
        for (what, args) in refusal_cases(&attach) {
            if let Err(e) = refused(what, &lab.floatip(&args), &expect) {
                failures.push(format!("layout {bad}: {e}"));
            }
        }
        failures.extend(
            before
                .changes(&lab)
                .into_iter()
                .map(|c| format!("layout {bad}: {c}")),
        );
    }
    // Positive control: with this floatip's version, the same commands work.
    set_layout_version(&lab, current);
    lab.ok(&["status"]);
    lab.ok(&["ip", "associate", FIP2, INST2_IP]);
    lab.ok(&attach);
    assert_eq!(
        lab.nat_pairs(),
        vec![
            (FIP1.to_string(), INST1_IP.to_string()),
            (FIP2.to_string(), INST2_IP.to_string())
        ]
    );
    assert!(
        failures.is_empty(),
        "{} layout check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!("[layout] ok ({:.1} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- counters

/// `nat stats FLOATING`: (in, out) packets.
fn pair_packets(lab: &Lab, floating: &str) -> (u64, u64) {
    let v = lab.json(&["nat", "stats", floating]);
    let n = |k: &str| v[0][k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    (n("in_packets"), n("out_packets"))
}

/// Shared counters (`attach --counters shared`, what the loader chooses where per-CPU ones
/// would not fit) are what the pinned maps keep: `status` names them and `nat stats` counts
/// pings exactly; a later attach without the option keeps them and goes on counting; one
/// asking for per-CPU counters is refused with one line, changing nothing.
#[test]
fn shared_counters_are_kept_across_attaches() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = build(Mode::XdpGeneric);
    let plain = lab.attach_args(&[]);
    let mut shared = plain.clone();
    shared.extend(["--counters", "shared"]);
    lab.ok(&shared);
    public_pool(&lab, &[FIP1], &[(FIP1, INST1_IP)]);
    let kind = |lab: &Lab| str_field(&lab.json(&["status"]), "association_counters");
    assert_eq!(kind(&lab), "shared");
    let out = ping(&lab.ext, FIP1);
    assert!(ping_ok(&out), "{out}");
    assert_eq!(pair_packets(&lab, FIP1), (3, 3));

    lab.ok(&plain);
    assert_eq!(
        kind(&lab),
        "shared",
        "a later attach keeps the pinned choice"
    );
    let out = ping(&lab.ext, FIP1);
    assert!(ping_ok(&out), "{out}");
    assert_eq!(pair_packets(&lab, FIP1), (6, 6));

    let mut per_cpu = plain.clone();
    per_cpu.extend(["--counters", "per-cpu"]);
    let before = Snapshot::take(&lab);
    refused(
        "attach --counters per-cpu",
        &lab.floatip(&per_cpu),
        &["shared", "per-cpu", "detach"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before.changes(&lab), Vec::<String>::new());
    assert_eq!(kind(&lab), "shared");
}

// ---------------------------------------------------------------- privileges

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn unprivileged_user_is_refused() {
    netns::require_root();
    let _serial = netns::serialize();
    let started = Instant::now();
    let mode = Mode::XdpGeneric;
    let lab = build(mode);
    lab.ok(&lab.attach_args(&[]));
    public_pool(&lab, &[FIP1, FIP2], &[(FIP1, INST1_IP)]);

    // Files: the database owner-only, in an owner-only directory floatip
    // created; the pin directory (and its maps/ and links/) owner-only.
    let state_dir = lab.state.parent().expect("state directory");
    let mut failures = Vec::new();
    for (p, want) in [
        (lab.state.as_path(), 0o600),
        (state_dir, 0o700),
        (lab.bpffs.as_path(), 0o700),
        (&lab.bpffs.join("maps"), 0o700),
        (&lab.bpffs.join("links"), 0o700),
    ] {
        let got = mode_of(p);
        if got != want {
            failures.push(format!("{} is {got:o}, should be {want:o}", p.display()));
        }
    }
    for suffix in ["-wal", "-shm"] {
        let p = state_dir.join(format!("state.db{suffix}"));
        if p.exists() && mode_of(&p) & 0o077 != 0 {
            failures.push(format!("{} is {:o}", p.display(), mode_of(&p)));
        }
    }

    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    // Positive control: nobody can run the binary at all, so a refusal
    // below is floatip's, not exec's.
    let out = lab.floatip_via(&nobody, &["--version"]);
    assert!(out.success(), "nobody cannot run floatip at all:\n{out}");

    let before = Snapshot::take(&lab);
    let attach = lab.attach_args(&[]);
    let mut cases = refusal_cases(&attach);
    cases.extend([("ip list", vec!["ip", "list"]), ("detach", vec!["detach"])]);
    eprintln!("[privileges] as nobody:");
    for (what, args) in cases {
        let out = lab.floatip_via(&nobody, &args);
        if let Err(e) = refused(what, &out, &["permission denied"]) {
            failures.push(e);
        }
    }
    failures.extend(before.changes(&lab));
    assert!(
        failures.is_empty(),
        "{} privilege check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!("[privileges] ok ({:.1} s)", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- replaced NIC

/// A pinned link outlives its NIC. When the NIC is deleted and comes back
/// with the same index (a router namespace rebuilt, a NIC replugged),
/// `attach` must replace the severed link instead of failing to update it.
#[test]
fn replaced_nic_is_attached_again() {
    netns::require_root();
    let _serial = netns::serialize();
    for mode in [Mode::Xdp, Mode::Tc] {
        let m = mode.as_str();
        let mut lab = build(mode);
        let gw = lab.gw.clone();
        lab.veth(&gw, EXTRA, &gw, EXTRA_PEER)
            .unwrap_or_else(|e| panic!("cannot add {EXTRA}: {e:#}"));
        let up = |lab: &Lab| {
            for ifname in [EXTRA, EXTRA_PEER] {
                netns::assert_success(&exec(&lab.gw, &["ip", "link", "set", ifname, "up"]));
            }
        };
        up(&lab);
        let attach = lab.attach_args(&[EXTRA]);
        lab.ok(&attach);
        let link = exec(&gw, &["ip", "-j", "link", "show", "dev", EXTRA]);
        let index = serde_json::from_str::<Value>(&link.stdout).unwrap()[0]["ifindex"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ifindex for {EXTRA}:\n{link}"))
            .to_string();
        netns::assert_success(&exec(&gw, &["ip", "link", "del", EXTRA]));
        netns::assert_success(&exec(
            &gw,
            &[
                "ip", "link", "add", EXTRA, "index", &index, "type", "veth", "peer", "name",
                EXTRA_PEER,
            ],
        ));
        up(&lab);
        let out = lab.floatip(&attach);
        assert!(
            out.success(),
            "[{m}] attach after {EXTRA} was replaced (same ifindex {index}) failed:\n{out}"
        );
        assert!(
            has_program(&lab, &gw, EXTRA),
            "[{m}] {EXTRA} has no program after attach"
        );
        let ids = program_ids(&lab.json(&["status"]));
        assert!(
            ids.get(EXTRA).is_some_and(|id| *id != 0),
            "[{m}] status shows no program on {EXTRA}: {ids:?}"
        );
        lab.ok(&["detach"]);
        assert!(
            !has_program(&lab, &gw, EXTRA),
            "[{m}] detach left {EXTRA} attached"
        );
    }
}
