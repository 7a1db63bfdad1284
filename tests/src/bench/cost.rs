//! Program cost: ns per packet of the data-plane programs under
//! `BPF_PROG_TEST_RUN` (repeat ≥ 1,000,000), with 1, 10,000 and 1,000,000
//! associations in maps of exactly that size.
//!
//! Every repetition runs `bench_cost`, which turns the test run's frame
//! into the one for the next address of the associated set and tail-calls
//! the program under test. Addresses are spread uniformly (frame n uses pair
//! n mod N) or, in the `zipf` cases, by popularity: frame n uses the pair of
//! the n-th of 2^20 draws from Zipf(1.0) over the N pairs (rank r drawn with
//! probability ∝ 1/r; ranks are given to pairs in a fixed random order), a
//! table the wrapper reads in turn. The wrapper's own cost is measured the
//! same way with `bench_pass` behind it, and the figures that matter are
//! the differences to that floor.
//!
//! The runs happen in a namespace of their own where the FIB lookup of a
//! translated packet succeeds (routes and static neighbours behind two
//! veths the programs manage), so a hit takes the full path up to the
//! redirect. The next-hop follower runs there as on a gateway, so a hit
//! takes the cached path (no FIB call); the `FIB path` cases are measured
//! after it stopped and withdrew the cache: what a hit costs without it. Association addresses are 10.128.0.0/9 (floating) and
//! 10.0.0.0/9 (fixed): map keys only, no packet ever leaves a test run.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use floatip::{
    control::follow_in_background,
    dataplane::{
        Pair, Role,
        bench::{
            CostRig, CostTarget, GenSpec, MinNatEntry, XDP_PASS, XDP_REDIRECT, in_netns, pin_thread,
        },
    },
    iface,
};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rand_distr::{Distribution, Zipf};
use tests::netns::Topology;

use super::env::{self, check_stop, in_ns, link_up, median, netns_path, sh};

const FLOATING_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);
const FIXED_BASE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Behind the default route (via `REMOTE`): where an instance's outbound traffic goes and
/// inbound traffic comes from. Its /16 holds no address the gateway manages, so the
/// anti-spoofing filter clears it with one array read.
const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// Neither associated nor in a pool: the miss case.
const STRANGER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
/// Draws in the popularity table (a power of two): more than the repetitions
/// of a quick run, so a run walks the draws rather than a short loop of them.
const ZIPF_DRAWS: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// `bench_pass` alone, no wrapper: the floor of any XDP program.
    BarePass,
    /// The wrapper + `bench_pass`: the floor the other cases are compared to.
    Pass,
    /// The wrapper + one hash lookup of the destination (a hit): what a
    /// single map lookup costs on this machine.
    LookupFloor,
    /// The wrapper + one successful `bpf_fib_lookup` of a translated frame.
    FibFloor,
    /// The wrapper + `bench_min_nat` (a hit): the floor of any NAT.
    MinimalNat,
    /// The minimal NAT with the first N steps of a router-grade hit (the staircase,
    /// `programs::BENCH_NAT_STAGES`): MAC check, header checks, counters, lease clock.
    NatStage(u8),
    Miss,
    Dnat,
    Snat,
    Hairpin,
    /// The same with destinations (sources) drawn by popularity.
    MinimalNatZipf,
    DnatZipf,
    SnatZipf,
    /// A DNAT hit from `REMOTE`, in the /16 of the gateway's own address: the filter cannot
    /// clear the source, so the exact anti-spoofing lookups run.
    DnatNear,
    /// The hits without the next-hop cache (the follower stopped): a FIB call each.
    DnatFib,
    SnatFib,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Case::BarePass => "xdp-pass (bare)",
            Case::Pass => "xdp-pass",
            Case::LookupFloor => "one hash lookup",
            Case::FibFloor => "one fib lookup",
            Case::MinimalNat => "minimal-nat hit",
            Case::NatStage(1) => "minimal-nat +mac",
            Case::NatStage(2) => "minimal-nat +mac +hdr",
            Case::NatStage(3) => "minimal-nat +mac +hdr +counters",
            Case::NatStage(_) => "minimal-nat +mac +hdr +counters +clock",
            Case::Miss => "miss",
            Case::Dnat => "dnat-hit",
            Case::Snat => "snat-hit",
            Case::Hairpin => "hairpin-hit",
            Case::MinimalNatZipf => "minimal-nat hit, zipf",
            Case::DnatZipf => "dnat-hit, zipf",
            Case::SnatZipf => "snat-hit, zipf",
            Case::DnatNear => "dnat-hit, source near the gateway",
            Case::DnatFib => "dnat-hit, FIB path",
            Case::SnatFib => "snat-hit, FIB path",
        }
    }

    fn zipf(self) -> bool {
        matches!(self, Case::MinimalNatZipf | Case::DnatZipf | Case::SnatZipf)
    }
}

/// Every case in report order: the two floors of the wrapper, then [`DELTA_CASES`].
pub const CASES: [Case; 2 + DELTA_CASES.len()] = {
    let mut all = [Case::BarePass; 2 + DELTA_CASES.len()];
    all[1] = Case::Pass;
    let mut i = 0;
    while i < DELTA_CASES.len() {
        all[i + 2] = DELTA_CASES[i];
        i += 1;
    }
    all
};

/// The cases reported as a difference to [`Case::Pass`]: everything behind
/// the same wrapper.
pub const DELTA_CASES: [Case; 17] = [
    Case::LookupFloor,
    Case::FibFloor,
    Case::MinimalNat,
    Case::NatStage(1),
    Case::NatStage(2),
    Case::NatStage(3),
    Case::NatStage(4),
    Case::Miss,
    Case::Dnat,
    Case::Snat,
    Case::Hairpin,
    Case::MinimalNatZipf,
    Case::DnatZipf,
    Case::SnatZipf,
    Case::DnatNear,
    Case::DnatFib,
    Case::SnatFib,
];

/// The cases measured without the follower, after the others.
fn uncached(case: Case) -> bool {
    matches!(case, Case::DnatFib | Case::SnatFib)
}

/// The medians of one association count.
#[derive(Clone, Debug)]
pub struct CostResult {
    pub associations: u32,
    /// Median ns per packet per case, in [`CASES`] order.
    pub ns: Vec<(Case, f64)>,
    /// Time to load the associations with `nat_add_bulk`.
    pub load_time: Duration,
    /// `memlock` of each data-plane map, by name.
    pub map_memory: Vec<(String, u64)>,
}

impl CostResult {
    pub fn get(&self, case: Case) -> f64 {
        self.ns
            .iter()
            .find(|(c, _)| *c == case)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

fn addr(base: Ipv4Addr, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + i)
}

/// Namespace with an external and an internal veth and everything a
/// successful FIB lookup needs; removed on drop.
pub struct CostNs {
    topo: Topology,
    ns: String,
}

impl CostNs {
    pub fn build() -> Result<Self> {
        let mut topo = Topology::new();
        let ns = topo.namespace("cost")?;
        topo.veth(&ns, "cx", &ns, "cxp")?;
        topo.veth(&ns, "ci", &ns, "cip")?;
        for ifname in ["cx", "cxp", "ci", "cip"] {
            link_up(&ns, ifname)?;
        }
        for (cidr, dev) in [("198.51.100.1/24", "cx"), ("10.255.0.1/16", "ci")] {
            sh(&["ip", "-n", &ns, "addr", "add", cidr, "dev", dev])?;
        }
        // The fixed IPs behind the internal neighbour; everything else (the DNAT sources,
        // the SNAT destinations) behind the external one.
        for (dst, via, dev) in [
            ("10.0.0.0/9", "10.255.0.2", "ci"),
            ("default", "198.51.100.2", "cx"),
        ] {
            sh(&["ip", "-n", &ns, "route", "add", dst, "via", via, "dev", dev])?;
        }
        for (ip, dev) in [("198.51.100.2", "cxp"), ("10.255.0.2", "cip")] {
            let peer_mac = env::fmt_mac(&env::mac(&ns, dev)?);
            let ours = if dev == "cxp" { "cx" } else { "ci" };
            sh(&[
                "ip",
                "-n",
                &ns,
                "neigh",
                "replace",
                ip,
                "lladdr",
                &peer_mac,
                "dev",
                ours,
                "nud",
                "permanent",
            ])?;
        }
        in_ns(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Self { topo, ns })
    }
}

/// Measures every case for each association count in `counts`.
pub fn run(counts: &[u32], repeat: u32, rounds: usize) -> Result<Vec<CostResult>> {
    let cost_ns = CostNs::build()?;
    let prefix = cost_ns.topo.prefix().to_string();
    let mut results = Vec::new();
    for &n in counts {
        check_stop()?;
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{prefix}-cost-{n}"));
        // Pins go even when a run fails half way.
        let _pins = PinGuard(bpffs.clone());
        let r = in_netns(&netns_path(&cost_ns.ns), || {
            pin_thread(1)?;
            measure(&bpffs, n, repeat, rounds)
        })
        .with_context(|| format!("program cost with {n} associations"))?;
        eprintln!(
            "  cost with {:>9} associations: {}",
            n,
            r.ns.iter()
                .map(|(c, v)| format!("{} {v:.1}", c.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        results.push(r);
    }
    Ok(results)
}

/// The next-hop follower on a thread of the cost namespace (a thread spawned there stays
/// in it), as the agent runs it on a gateway. Stopping it withdraws the cache.
struct FollowerThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl FollowerThread {
    fn start(bpffs: &std::path::Path) -> Self {
        let (stop, handle) = follow_in_background(bpffs.to_path_buf(), "bench");
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Until every pair's hop and the default route's are cached.
    fn wait_cached(&self, rig: &CostRig, n: u32) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = rig.dataplane()?.next_hop_status()?;
            if st.cached == n as usize && st.default_route {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the follower cached {} of {n} next hops (default route: {})",
                    st.cached,
                    st.default_route
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it and waits until it has withdrawn the cache.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for FollowerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The frames of a case; `run_case` sets the destination MAC.
fn spec(src: Ipv4Addr, src_count: u32, dst: Ipv4Addr, dst_count: u32, offset: u32) -> GenSpec {
    GenSpec {
        dst_mac: [0; 6],
        src_mac: [0x02, 0, 0, 0, 0, 0x0b],
        src_ip: src,
        src_count,
        dst_ip: dst,
        dst_count,
        dst_offset: offset,
        sport: 40_000,
        flows: 1024,
        dport: 53,
        action: XDP_PASS,
    }
}

/// [`ZIPF_DRAWS`] pair indices below `n`, Zipf(1.0) by rank, ranks given to
/// pairs in a random order (so popular pairs are not neighbours in the
/// maps); fixed seed, so every run draws the same.
pub fn zipf_table(n: u32) -> Result<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(13);
    let mut pair_of_rank: Vec<u32> = (0..n).collect();
    pair_of_rank.shuffle(&mut rng);
    let zipf = Zipf::new(f64::from(n), 1.0)?;
    Ok((0..ZIPF_DRAWS)
        .map(|_| {
            let rank = zipf.sample(&mut rng) as u32;
            pair_of_rank[(rank.clamp(1, n) - 1) as usize]
        })
        .collect())
}

/// Runs inside the cost namespace.
fn measure(bpffs: &std::path::Path, n: u32, repeat: u32, rounds: usize) -> Result<CostResult> {
    let ext = iface::index("cx")?;
    let int = iface::index("ci")?;
    let nics = [
        (ext, iface::mac("cx")?, Role::External),
        (int, iface::mac("ci")?, Role::Internal),
    ];
    let mut rig = CostRig::load(bpffs, n, &nics, ZIPF_DRAWS)?;
    rig.add_lookup_key(FLOATING_BASE)?;
    let result = (|| {
        let pairs: Vec<Pair> = (0..n)
            .map(|i| Pair {
                floating: addr(FLOATING_BASE, i),
                fixed: addr(FIXED_BASE, i),
            })
            .collect();
        let t = Instant::now();
        rig.dataplane()?.nat_add_bulk(&pairs)?;
        let load_time = t.elapsed();
        // The minimal NAT's entries: the same translation, the egress and
        // the MACs the FIB lookup finds (the next hop is the peer of `ci`).
        let (int, int_mac) = (nics[1].0, nics[1].1);
        let next_hop = iface::mac("cip")?;
        let entries: Vec<(Ipv4Addr, MinNatEntry)> = pairs
            .iter()
            .map(|p| {
                let entry = MinNatEntry {
                    dst_mac: next_hop,
                    src_mac: int_mac,
                    addr: u32::from_ne_bytes(p.fixed.octets()),
                    ifindex: int,
                };
                (p.floating, entry)
            })
            .collect();
        rig.add_min_nat(&entries)?;
        rig.set_zipf(&zipf_table(n)?)?;
        let map_memory = rig.map_memory()?;
        let mut samples: Vec<(Case, Vec<f64>)> = CASES.iter().map(|c| (*c, Vec::new())).collect();
        let mut follower = FollowerThread::start(bpffs);
        follower.wait_cached(&rig, n)?;
        for cached in [true, false] {
            if !cached {
                follower.stop();
            }
            for _ in 0..rounds {
                for (case, list) in samples.iter_mut() {
                    if uncached(*case) == cached {
                        continue;
                    }
                    check_stop()?;
                    list.push(run_case(&mut rig, *case, n, &nics, repeat)?);
                }
            }
        }
        Ok(CostResult {
            associations: n,
            ns: samples.into_iter().map(|(c, v)| (c, median(&v))).collect(),
            load_time,
            map_memory,
        })
    })();
    rig.cleanup()?;
    result
}

/// One run of `case` on `nics` (ifindex, MAC, external?: the external NIC
/// first); checks that every repetition took the intended path.
fn run_case(
    rig: &mut CostRig,
    case: Case,
    n: u32,
    nics: &[(u32, [u8; 6], Role); 2],
    repeat: u32,
) -> Result<f64> {
    let (ext, int) = (nics[0].0, nics[1].0);
    let half = n / 2;
    let dnat = spec(INTERNET, 1, FLOATING_BASE, n, 0);
    let snat = spec(FIXED_BASE, n, INTERNET, 1, 0);
    let (target, spec, ingress, action, translated) = match case {
        Case::BarePass => {
            let r = rig.run_bare_pass(&dnat.template(), ext, repeat)?;
            if r.action != XDP_PASS {
                bail!("bench_pass returned {}", r.action);
            }
            return Ok(r.ns_per_packet);
        }
        Case::Pass => (CostTarget::Pass, dnat, ext, XDP_PASS, false),
        Case::LookupFloor => (
            CostTarget::Lookup,
            spec(REMOTE, 1, FLOATING_BASE, 1, 0),
            ext,
            XDP_PASS,
            false,
        ),
        // The SNAT frame's destination has a route and a permanent neighbour.
        Case::FibFloor => (
            CostTarget::Fib,
            spec(FIXED_BASE, 1, REMOTE, 1, 0),
            int,
            XDP_PASS,
            false,
        ),
        Case::MinimalNat | Case::MinimalNatZipf => {
            (CostTarget::MinNat, dnat, ext, XDP_REDIRECT, false)
        }
        Case::NatStage(n) => (CostTarget::NatStage(n), dnat, ext, XDP_REDIRECT, false),
        Case::Miss => (
            CostTarget::External,
            spec(REMOTE, 1, STRANGER, 1, 0),
            ext,
            XDP_PASS,
            false,
        ),
        Case::Dnat | Case::DnatZipf | Case::DnatFib => {
            (CostTarget::External, dnat, ext, XDP_REDIRECT, true)
        }
        Case::DnatNear => (
            CostTarget::External,
            spec(REMOTE, 1, FLOATING_BASE, n, 0),
            ext,
            XDP_REDIRECT,
            true,
        ),
        Case::Snat | Case::SnatZipf | Case::SnatFib => {
            (CostTarget::Internal, snat, int, XDP_REDIRECT, true)
        }
        // Source pair i, destination pair i + n/2: another instance's floating IP.
        Case::Hairpin => (
            CostTarget::Internal,
            spec(FIXED_BASE, n, FLOATING_BASE, n, half),
            int,
            XDP_REDIRECT,
            true,
        ),
    };
    // Addressed to the ingress NIC, as a router's neighbour sends it: the
    // programs translate nothing else.
    let mut spec = spec;
    spec.dst_mac = if ingress == ext { nics[0].1 } else { nics[1].1 };
    let r = rig.run(target, &spec, case.zipf(), ingress, repeat)?;
    if r.action != action {
        bail!(
            "{}: the last repetition returned action {} instead of {action}",
            case.name(),
            r.action
        );
    }
    let want = if translated { u64::from(repeat) } else { 0 };
    if r.translated != want {
        bail!(
            "{}: {} of {repeat} repetitions were translated, expected {want}",
            case.name(),
            r.translated
        );
    }
    Ok(r.ns_per_packet)
}
