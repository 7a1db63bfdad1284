//! `cargo xtask bench --only gateways`: a gateway group on etcd ([`GatewayLab`]).
//!
//! - propagation: from the API's answer to an association (on gateway 1) until every
//!   gateway's maps hold the pair, read from their pins in a tight loop, with 1, 2 and 3
//!   gateways;
//! - failover: the outage a UDP stream at 1,000 datagrams/s sees when the owning gateway is
//!   killed (agent SIGKILLed, NICs down), the longest gap between two datagrams arriving
//!   (receiver's monotonic clock); median of 5 kills, the gateway brought back in between;
//! - cold start: a gateway started on empty maps with 100,000 associations in etcd, until its
//!   maps hold them all.

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tests::{
    gateways::{GatewayLab, INST, POOL, Stream},
    netns::Mode,
};

use super::env::percentile;

pub struct Propagation {
    pub gateways: usize,
    pub runs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct GatewaysResult {
    pub propagation: Vec<Propagation>,
    /// Outage of each kill, in seconds.
    pub failovers: Vec<f64>,
    pub lease_ttl_s: u64,
    /// (associations, seconds until all applied, seconds until the agent joined).
    pub cold_start: Option<(u32, f64, f64)>,
    pub notes: Vec<String>,
}

impl GatewaysResult {
    pub fn failover_median(&self) -> Option<f64> {
        (!self.failovers.is_empty()).then(|| percentile(&self.failovers, 50.0))
    }
}

fn started(bin: &Path, n: usize) -> Result<GatewayLab> {
    let mut lab = GatewayLab::build_with(n, Mode::Xdp, bin)?;
    for g in 0..n {
        lab.start(g)?;
    }
    Ok(lab)
}

fn owner(lab: &GatewayLab, via: usize, not: Option<&str>) -> Result<usize> {
    let mut name = None;
    GatewayLab::wait(Duration::from_secs(10), || {
        name = lab
            .owner(via, POOL)
            .ok()
            .flatten()
            .filter(|n| Some(n.as_str()) != not);
        name.is_some()
    })
    .context("no gateway owns the pool")?;
    let name = name.expect("waited for");
    Ok(lab
        .gateways
        .iter()
        .position(|g| g.name == name)
        .expect("a lab gateway"))
}

pub fn run(bin: &Path, runs: usize, kills: usize, cold: u32) -> Result<GatewaysResult> {
    let mut res = GatewaysResult {
        propagation: Vec::new(),
        failovers: Vec::new(),
        lease_ttl_s: tests::gateways::LEASE_TTL.parse().unwrap_or(1),
        cold_start: None,
        notes: Vec::new(),
    };
    for n in 1..=3 {
        eprintln!("  propagation with {n} gateway(s), {runs} associations");
        let lab = started(bin, n)?;
        // Opened once: a poll is then one map lookup per gateway.
        let maps: Vec<floatip::dataplane::Dataplane> = (0..n)
            .map(|g| floatip::dataplane::Dataplane::open(&lab.gateways[g].bpffs))
            .collect::<Result<_>>()?;
        let mut ms = Vec::with_capacity(runs);
        for i in 0..runs {
            let floating = Ipv4Addr::new(203, 0, 113, 10 + (i % 200) as u8);
            // On the tenant network (an association needs a fixed IP the gateway reaches).
            let fixed = Ipv4Addr::new(10, 0, 0, 100 + (i % 100) as u8);
            lab.associate(0, &floating.to_string(), &fixed.to_string())?;
            let answered = Instant::now();
            GatewayLab::wait_every(Duration::from_secs(5), Duration::from_micros(500), || {
                maps.iter()
                    .all(|m| m.fixed_of(floating).is_ok_and(|f| f == Some(fixed)))
            })
            .with_context(|| format!("{floating} never reached every gateway"))?;
            ms.push(answered.elapsed().as_secs_f64() * 1e3);
            // Released again, so the next run starts from the same state.
            lab.floatip(0, &["ip", "delete", &floating.to_string()])
                .check()?;
        }
        res.propagation.push(Propagation {
            gateways: n,
            runs,
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
        });
    }
    res.notes.push(
        "propagation: every gateway's pinned maps polled every 0.5 ms (one map lookup each), from when the API's answer is back at the client"
            .into(),
    );

    eprintln!("  failover, {kills} kills");
    let mut lab = started(bin, 3)?;
    let floating = "203.0.113.10";
    lab.associate(0, floating, INST[0])?;
    GatewayLab::wait(Duration::from_secs(5), || {
        (0..3).all(|g| lab.has_pair(g, floating.parse().unwrap(), INST[0].parse().unwrap()))
    })
    .context("the association did not reach every gateway")?;
    for k in 0..kills {
        let victim = owner(&lab, 0, None)?;
        let dead = lab.gateways[victim].name.clone();
        let survivor = (victim + 1) % 3;
        let stream = Stream::start(&lab, floating, 0, 8000 + k as u16, 1000)?;
        std::thread::sleep(Duration::from_secs(1));
        lab.kill(victim);
        lab.nics(victim, false)?;
        owner(&lab, survivor, Some(&dead))?;
        std::thread::sleep(Duration::from_secs(2));
        let report = stream.finish()?;
        if report.received == 0 {
            bail!("the stream never arrived: {report:?}");
        }
        res.failovers.push(report.longest_gap.as_secs_f64());
        lab.nics(victim, true)?;
        lab.start(victim)?;
        // Settled: the returned gateway owns what it is preferred for again.
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(lab);

    if cold > 0 {
        eprintln!("  cold start with {cold} associations");
        let mut lab = GatewayLab::build_with(1, Mode::Xdp, bin)?;
        // The benchmarking range (RFC 2544), as the control-plane benchmark uses it: no
        // documentation range holds 100,000 addresses.
        lab.floatip(0, &["pool", "create", "many", "--range", "198.18.0.0/15"])
            .check()?;
        lab.floatip(
            0,
            &[
                "bench",
                "seed",
                "--pool",
                "many",
                "--count",
                &cold.to_string(),
                "--floating",
                "198.18.0.1",
                "--fixed",
                "10.1.0.1",
            ],
        )
        .check()?;
        let size = (cold + 1024).next_power_of_two().to_string();
        let t = Instant::now();
        lab.start_with(0, &["--max-associations", &size])?;
        let joined = t.elapsed().as_secs_f64();
        let dp = floatip::dataplane::Dataplane::open(&lab.gateways[0].bpffs)?;
        let last: Ipv4Addr = (u32::from(Ipv4Addr::new(198, 18, 0, 1)) + cold - 1).into();
        GatewayLab::wait(Duration::from_secs(60), || {
            dp.fixed_of(last).is_ok_and(|f| f.is_some())
                && dp.nat_list().is_ok_and(|l| l.len() >= cold as usize)
        })
        .context("the cold-started gateway never held every association")?;
        res.cold_start = Some((cold, t.elapsed().as_secs_f64(), joined));
    }
    Ok(res)
}
