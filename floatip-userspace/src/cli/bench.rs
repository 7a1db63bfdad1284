//! `floatip bench gen`: the benchmark's traffic generator on its own, e.g.
//! against a real NIC. 64-byte UDP frames are written by an XDP program run
//! through `BPF_PROG_TEST_RUN` with live frames and sent out of `--dev`
//! with XDP_TX (the device's `ndo_xdp_xmit`).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::{
    addr::parse_ipv4,
    dataplane::bench::{BenchObject, GenSpec, XDP_TX, pin_thread},
    iface,
};

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Send 64-byte UDP frames out of an interface at the highest rate the CPU allows.
    Gen(GenArgs),
    /// Fill an etcd state with COUNT associations in POOL, fast (for `bench --only gateways`:
    /// not atomic, no checks beyond the pool's existence).
    #[command(hide = true)]
    Seed(SeedArgs),
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[arg(long)]
    pool: String,
    #[arg(long)]
    count: u32,
    /// First floating IP; the others follow it.
    #[arg(long, value_name = "IP")]
    floating: String,
    /// First fixed IP; the others follow it.
    #[arg(long, value_name = "IP")]
    fixed: String,
}

pub fn seed(store: &crate::store::StoreSpec, args: &SeedArgs) -> Result<()> {
    let floating = u32::from(parse_ipv4(&args.floating)?);
    let fixed = u32::from(parse_ipv4(&args.fixed)?);
    let pairs: Vec<_> = (0..args.count)
        .map(|i| {
            (
                floating.wrapping_add(i).into(),
                fixed.wrapping_add(i).into(),
            )
        })
        .collect();
    crate::store::Store::open_spec(store, false)?.seed_pairs(&args.pool, &pairs)
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Interface to send from (in this network namespace).
    #[arg(long)]
    dev: String,
    /// Destination MAC: the next hop's (the gateway's external NIC).
    #[arg(long, value_name = "MAC")]
    dst_mac: String,
    /// Source MAC (default: the interface's).
    #[arg(long, value_name = "MAC")]
    src_mac: Option<String>,
    /// Source address.
    #[arg(long, value_name = "IP")]
    src: String,
    /// First destination address (a floating IP).
    #[arg(long, value_name = "IP")]
    dst: String,
    /// Consecutive destination addresses to spread the frames over.
    #[arg(long, default_value_t = 1)]
    dst_count: u32,
    /// Distinct UDP source ports, from --sport on.
    #[arg(long, default_value_t = 1024)]
    flows: u32,
    #[arg(long, default_value_t = 1024)]
    sport: u16,
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// Stop after this many seconds (default: on Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
    /// Frames per kernel batch (1..=256).
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("bad MAC address {s:?}");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| anyhow::anyhow!("bad MAC address {s:?}"))?;
    }
    Ok(mac)
}

pub fn run(cli: &super::Cli, cmd: &BenchCmd) -> Result<()> {
    let a = match cmd {
        BenchCmd::Gen(a) => a,
        BenchCmd::Seed(s) => return seed(&cli.store_spec()?, s),
    };
    if !(1..=256).contains(&a.batch) {
        bail!("--batch must be between 1 and 256");
    }
    if a.flows == 0 || a.dst_count == 0 {
        bail!("--flows and --dst-count must be at least 1");
    }
    let ifindex = iface::index(&a.dev)?;
    let src_mac = match &a.src_mac {
        Some(m) => parse_mac(m)?,
        None => iface::mac(&a.dev)?,
    };
    let spec = GenSpec {
        dst_mac: parse_mac(&a.dst_mac)?,
        src_mac,
        src_ip: parse_ipv4(&a.src)?,
        src_count: 1,
        dst_ip: parse_ipv4(&a.dst)?,
        dst_count: a.dst_count,
        dst_offset: 0,
        sport: a.sport,
        flows: a.flows,
        dport: a.dport,
        action: XDP_TX,
    };
    if let Some(cpu) = a.cpu {
        pin_thread(cpu)?;
    }
    super::signals::catch_stop();
    let mut g = BenchObject::load()?;
    g.set_gen(&spec, false)?;
    let deadline = a
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    // Small enough calls that Ctrl-C and the deadline are honoured within ~0.1 s.
    const CHUNK: u32 = 1 << 18;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut last = start;
    eprintln!(
        "sending from {} ({}) to {}..+{} port {}, {} source ports; Ctrl-C stops",
        a.dev,
        spec.src_ip,
        spec.dst_ip,
        a.dst_count - 1,
        a.dport,
        a.flows
    );
    while !super::signals::stop_requested() && deadline.is_none_or(|d| Instant::now() < d) {
        g.gen_run(ifindex, CHUNK, a.batch)?;
        sent += u64::from(CHUNK);
        if last.elapsed() >= Duration::from_secs(1) {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{sent} frames in {secs:.1} s: {:.3} Mpps",
                sent as f64 / secs / 1e6
            );
            last = Instant::now();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} frames in {secs:.2} s: {:.3} Mpps offered (what the device really sent: its own counters)",
        sent as f64 / secs / 1e6
    );
    Ok(())
}
