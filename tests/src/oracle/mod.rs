//! The differential namespace test, the kernel as the oracle (issue 10).
//!
//! Two gateways are built the same way ([`gateway`]): one runs floatip,
//! the other Linux forwarding with nftables DNAT/SNAT. Generated cases
//! ([`cases`]) are injected as raw frames next to each gateway (from the
//! router towards its external NIC, from an instance towards its internal
//! NIC); what each gateway sends out on either side is captured, decoded
//! into fields ([`observe`]) and compared, together with the checksum-error
//! counters of the receiving hosts and what sockets see ([`sockets`]).
//! Differences the design intends, and defects of issue 10 not yet fixed,
//! are listed in [`expect`]; anything else fails the test.

pub mod cases;
pub mod expect;
pub mod gateway;
pub mod observe;
pub mod socket;
pub mod sockets;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use self::{
    cases::{Case, Dir},
    gateway::{EXT, FIP1, GW_EXT_MAC, GW_INT_MAC, Gateway, INST1, INST1_MAC, Kind, RTR_MAC},
    observe::{MARKER_ID, Point, Seen},
    socket::Received,
};
use crate::{netns::Mode, pkt};

/// What one case produced at one gateway.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Frames (fragments reassembled), sorted.
    pub seen: Vec<Seen>,
    /// Counters of the receiving hosts that changed, with their increase.
    pub counters: BTreeMap<String, u64>,
}

fn marker(dir: Dir, seq: u16) -> Vec<u8> {
    let (src, dst, smac, dmac) = match dir {
        Dir::In => (EXT, FIP1, RTR_MAC, GW_EXT_MAC),
        Dir::Out => (INST1, EXT, INST1_MAC, GW_INT_MAC),
    };
    let id = MARKER_ID.to_be_bytes();
    let s = seq.to_be_bytes();
    let icmp = pkt::icmp(8, 0, [id[0], id[1], s[0], s[1]], b"oracle barrier");
    let mut ip = pkt::Ip::new(src, dst, 1);
    ip.id = MARKER_ID;
    pkt::eth(dmac, smac, None, 0x0800, &ip.packet(&icmp))
}

/// (ICMP type, seq) of a barrier frame.
fn marker_of(r: &Received) -> Option<(u8, u16)> {
    let b = &r.bytes;
    if b.len() < 14 + 28 || b[12..14] != [0x08, 0x00] || b[14 + 9] != 1 {
        return None;
    }
    let icmp = &b[14 + ((b[14] & 0x0f) as usize) * 4..];
    (icmp.len() >= 8
        && matches!(icmp[0], 0 | 8)
        && u16::from_be_bytes([icmp[4], icmp[5]]) == MARKER_ID)
        .then(|| (icmp[0], u16::from_be_bytes([icmp[6], icmp[7]])))
}

/// How long a barrier may take before the case is reported as lost. Not a
/// timing assertion: a barrier normally takes a millisecond.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a barrier both ways and collects frames until both echo
/// requests and both replies have crossed the gateway: everything the
/// case caused (including the hosts' answers to it) was sent before.
fn barrier(gw: &Gateway, seq: u16, raw: &mut Vec<(Point, Received)>) -> Result<bool> {
    gw.ext_tx.send(&marker(Dir::In, seq))?;
    gw.int_tx.send(&marker(Dir::Out, seq))?;
    let mut got = [false; 4];
    let deadline = Instant::now() + BARRIER_TIMEOUT;
    while Instant::now() < deadline {
        gw.wait(Duration::from_millis(20));
        for (p, r) in gw.take() {
            if let Some((kind, s)) = marker_of(&r) {
                if s == seq {
                    got[(p == Point::Int) as usize * 2 + (kind == 0) as usize] = true;
                }
            } else {
                raw.push((p, r));
            }
        }
        if got.iter().all(|g| *g) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs every case through `gw`.
pub fn run_cases(gw: &Gateway, cases: &[Case]) -> Result<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::default(); cases.len()];
    let mut owner: HashMap<u16, usize> = HashMap::new();
    // A barrier first: the labs' own start-up traffic is not a case's.
    let mut raw = Vec::new();
    if !barrier(gw, 0xffff, &mut raw)? {
        bail!(
            "{}: the barrier frames do not cross the gateway",
            gw.kind.name()
        );
    }
    let mut before = gw.counters()?;
    let mut lost = Vec::new();
    let arp_sink = cases.iter().position(|c| c.class == cases::GATEWAY_ARP);
    for (i, case) in cases.iter().enumerate() {
        owner.insert(case.tag, i);
        if case.rate_limited() {
            // A router's route errors and its other ICMP errors to one
            // address share one token bucket (`ip_error` and
            // `icmpv4_xrlim_allow` use the same inet_peer): an error an
            // earlier case made it send to that address must be 1 s old,
            // or this case's route error may not be sent in one run only.
            std::thread::sleep(Duration::from_millis(1100));
        }
        for (dir, f) in &case.frames {
            match dir {
                Dir::In => gw.ext_tx.send(f)?,
                Dir::Out => gw.int_tx.send(f)?,
            }
        }
        let mut raw = Vec::new();
        if !barrier(gw, i as u16, &mut raw)? {
            lost.push(i);
            if lost.len() > 5 {
                bail!(
                    "{}: the barrier after cases {lost:?} did not come back",
                    gw.kind.name()
                );
            }
        }
        if case.rate_limited() {
            // The route-error token of inst1's address refills in 1 s.
            std::thread::sleep(Duration::from_millis(1100));
        }
        let after = gw.counters()?;
        for ((name, a), (_, b)) in after.iter().zip(&before) {
            if a != b {
                outcomes[i].counters.insert(name.clone(), a - b);
            }
        }
        before = after;
        for s in observe::decode_all(&raw) {
            if let Some(k) = arp_sink
                && s.get("arp.op") == Some("1")
                && !case.class.starts_with("arp-")
            {
                outcomes[k].seen.push(s);
                continue;
            }
            // A frame carrying a case's tag belongs to that case (it may be late).
            let j = s
                .get("tag")
                .and_then(|t| t.parse::<u16>().ok())
                .and_then(|t| owner.get(&t).copied())
                .unwrap_or(i);
            outcomes[j].seen.push(s);
        }
    }
    for o in &mut outcomes {
        for s in &mut o.seen {
            s.fields.remove("tag");
        }
        o.seen.sort();
    }
    if let Some(k) = arp_sink {
        // The kernel repeats an ARP request a timing-dependent number of times.
        outcomes[k].seen.dedup();
    }
    Ok(outcomes)
}

/// One field that differs between the oracle and floatip.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diff {
    pub point: &'static str,
    pub field: String,
    pub oracle: String,
    pub floatip: String,
}

fn field_diffs(point: &'static str, a: &Seen, b: &Seen) -> Vec<Diff> {
    let mut keys: Vec<&&str> = a.fields.keys().chain(b.fields.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            (x != y).then(|| Diff {
                point,
                field: k.to_string(),
                oracle: x.unwrap_or("(absent)").to_string(),
                floatip: y.unwrap_or("(absent)").to_string(),
            })
        })
        .collect()
}

/// The differences between what the oracle and floatip made of one case:
/// identical frames cancel out, the rest are paired by fewest differing
/// fields, and what is left unpaired is a missing or extra frame.
pub fn diff(oracle: &Outcome, got: &Outcome) -> Vec<Diff> {
    let mut a: Vec<&Seen> = oracle.seen.iter().collect();
    let mut b: Vec<&Seen> = got.seen.iter().collect();
    a.retain(|s| {
        if let Some(j) = b.iter().position(|t| t == s) {
            b.remove(j);
            false
        } else {
            true
        }
    });
    let mut out = Vec::new();
    for s in a {
        let best = b
            .iter()
            .enumerate()
            .filter(|(_, t)| t.point == s.point)
            .min_by_key(|(_, t)| field_diffs("", s, t).len());
        match best {
            Some((j, t)) => {
                out.extend(field_diffs(s.point.name(), s, t));
                b.remove(j);
            }
            None => out.push(Diff {
                point: s.point.name(),
                field: "frame".into(),
                oracle: s.summary(),
                floatip: "(none)".into(),
            }),
        }
    }
    for t in b {
        out.push(Diff {
            point: t.point.name(),
            field: "frame".into(),
            oracle: "(none)".into(),
            floatip: t.summary(),
        });
    }
    let mut keys: Vec<&String> = oracle.counters.keys().chain(got.counters.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (x, y) = (oracle.counters.get(k), got.counters.get(k));
        if x != y {
            out.push(Diff {
                point: "host",
                field: format!("counter {k}"),
                oracle: format!("+{}", x.unwrap_or(&0)),
                floatip: format!("+{}", y.unwrap_or(&0)),
            });
        }
    }
    out
}

/// How a run is set up.
pub struct Options<'a> {
    pub cases: usize,
    pub seed: u64,
    pub modes: Vec<Mode>,
    pub floatip_bin: &'a Path,
    pub netprobe_bin: &'a Path,
}

/// The seed of `cargo xtask test`'s run (fixed, so CI is repeatable).
pub const DEFAULT_SEED: u64 = 0x0ac1e;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

impl<'a> Options<'a> {
    /// `FLOATIP_ORACLE_CASES` (default `cases`), `FLOATIP_ORACLE_SEED`
    /// (default [`DEFAULT_SEED`]), `FLOATIP_ORACLE_MODES` (comma-separated,
    /// default all three).
    pub fn from_env(cases: usize, floatip_bin: &'a Path, netprobe_bin: &'a Path) -> Self {
        let modes = match std::env::var("FLOATIP_ORACLE_MODES") {
            Ok(v) => v
                .split(',')
                .map(|m| match m.trim() {
                    "xdp" => Mode::Xdp,
                    "xdp-generic" => Mode::XdpGeneric,
                    "tc" => Mode::Tc,
                    other => panic!("FLOATIP_ORACLE_MODES: unknown mode {other:?}"),
                })
                .collect(),
            Err(_) => vec![Mode::Xdp, Mode::XdpGeneric, Mode::Tc],
        };
        Options {
            cases: env_u64("FLOATIP_ORACLE_CASES").map_or(cases, |c| c as usize),
            seed: env_u64("FLOATIP_ORACLE_SEED").unwrap_or(DEFAULT_SEED),
            modes,
            floatip_bin,
            netprobe_bin,
        }
    }
}

/// The verdict of a run: printable lines, and whether it passed.
pub struct Report {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        if !self.failures.is_empty() {
            let _ = write!(
                s,
                "\n\n{} FAILURE(S):\n{}",
                self.failures.len(),
                self.failures.join("\n")
            );
        }
        s
    }
}

/// Builds the oracle and one floatip gateway per mode, runs the cases and
/// the socket checks through each, and judges the differences.
pub fn run(opt: &Options) -> Result<Report> {
    let cases = cases::generate(opt.seed, opt.cases.max(cases::class_count()));
    let mut lines = vec![format!(
        "oracle test: {} cases, seed {:#x} (replay: FLOATIP_ORACLE_SEED={:#x} FLOATIP_ORACLE_CASES={})",
        cases.len(),
        opt.seed,
        opt.seed,
        cases.len()
    )];
    let t = Instant::now();
    let (oracle, oracle_sockets) = {
        let gw = Gateway::build(Kind::Oracle, opt.floatip_bin, opt.netprobe_bin)?;
        // Cases first: the socket checks spend the route-error tokens.
        let c = run_cases(&gw, &cases)?;
        (c, sockets::run(&gw)?)
    };
    let oracle = expect::correct_oracle(&cases, oracle);
    lines.push(format!("oracle: {:.1} s", t.elapsed().as_secs_f64()));
    let mut failures = Vec::new();
    for &mode in &opt.modes {
        let t = Instant::now();
        let gw = Gateway::build(Kind::Floatip(mode), opt.floatip_bin, opt.netprobe_bin)?;
        let got = expect::correct_floatip(&cases, run_cases(&gw, &cases)?);
        let got_sockets = sockets::run(&gw)?;
        drop(gw);
        let mut diffs: Vec<(usize, Diff)> = Vec::new();
        for (i, (o, g)) in oracle.iter().zip(&got).enumerate() {
            diffs.extend(diff(o, g).into_iter().map(|d| (i, d)));
        }
        let socket_diffs = sockets::compare(&oracle_sockets, &got_sockets);
        // FLOATIP_ORACLE_SHOW=CLASS prints both sides of every case of CLASS.
        if let Ok(show) = std::env::var("FLOATIP_ORACLE_SHOW") {
            for (c, (o, g)) in cases.iter().zip(oracle.iter().zip(&got)) {
                if c.class == show {
                    lines.push(format!(
                        "  #{} {} {}: {}",
                        c.n,
                        c.class,
                        c.dir.name(),
                        c.what
                    ));
                    for (side, x) in [("oracle", o), (mode.as_str(), g)] {
                        for s in &x.seen {
                            lines.push(format!("    {side} {s} {:?}", s.fields));
                        }
                        lines.push(format!("    {side} counters {:?}", x.counters));
                    }
                }
            }
        }
        let verdict = expect::judge(mode, &cases, &diffs, &socket_diffs);
        lines.push(format!(
            "[{}] {:.1} s: {} cases, {} differing",
            mode.as_str(),
            t.elapsed().as_secs_f64(),
            cases.len(),
            diffs
                .iter()
                .map(|(i, _)| *i)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        ));
        lines.extend(verdict.lines);
        failures.extend(verdict.failures);
    }
    Ok(Report { lines, failures })
}
