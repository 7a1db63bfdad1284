//! `attach`, `detach`, `status` and the `nat` plumbing: parse and print.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use super::{Cli, signals};
use crate::{
    control::{Control, Gateway, SyncReport, SyncState},
    dataplane::{AttachOptions, Counters, Mode},
    error::fail,
    output,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Xdp,
    XdpGeneric,
    Tc,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Xdp => Mode::Xdp,
            ModeArg::XdpGeneric => Mode::XdpGeneric,
            ModeArg::Tc => Mode::Tc,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CountersArg {
    PerCpu,
    Shared,
}

impl From<CountersArg> for Counters {
    fn from(c: CountersArg) -> Self {
        match c {
            CountersArg::PerCpu => Counters::PerCpu,
            CountersArg::Shared => Counters::Shared,
        }
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// NIC on the external network (repeatable).
    #[arg(long, required = true)]
    pub external: Vec<String>,
    /// NIC on a tenant network (repeatable).
    #[arg(long, required = true)]
    pub internal: Vec<String>,
    /// xdp (native), xdp-generic, or tc (TCX classifiers).
    #[arg(long, value_enum, default_value = "xdp")]
    pub mode: ModeArg,
    /// Size of the association maps when they are created (default 65536; maps already
    /// pinned keep theirs, and a different size is refused).
    #[arg(long)]
    pub max_associations: Option<u32>,
    /// Per-association counters per-cpu (no contention, memory grows with the CPUs) or shared
    /// (atomic adds) when the maps are created; default: per-cpu where they take at most
    /// 256 MiB, else shared (maps already pinned keep theirs, and the other is refused).
    #[arg(long, value_enum)]
    pub counters: Option<CountersArg>,
    /// Reload maps pinned by another state database from this one.
    #[arg(long)]
    pub adopt: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Detach only these interfaces; without it, everything is removed.
    #[arg(long = "interface")]
    pub interfaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Stop after this many seconds instead of at Ctrl-C.
    #[arg(long)]
    pub seconds: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum NatCmd {
    /// Map FLOATING to FIXED directly in the maps (no database).
    Add { floating: Ipv4Addr, fixed: Ipv4Addr },
    /// Remove the mapping of FLOATING.
    Del { floating: Ipv4Addr },
    /// List the mappings in the maps.
    List,
    /// Per-association packet and byte counters.
    Stats { floating: Option<Ipv4Addr> },
}

pub fn attach(cli: &Cli, args: &AttachArgs) -> Result<()> {
    let opts = AttachOptions {
        external: args.external.clone(),
        internal: args.internal.clone(),
        mode: args.mode.into(),
        max_associations: args.max_associations,
        counters: args.counters.map(Counters::from),
    };
    let report = Gateway::new(&cli.bpffs).attach(&cli.store_spec()?, &opts, args.adopt)?;
    for w in &report.warnings {
        eprintln!("floatip: warning: {w}");
    }
    output::print_text(&format!(
        "attached in {} mode: external {}, internal {}; {} associations loaded\n",
        opts.mode.as_str(),
        opts.external.join(","),
        opts.internal.join(","),
        report.restored
    ))
}

pub fn detach(cli: &Cli, args: &DetachArgs) -> Result<()> {
    Gateway::new(&cli.bpffs).detach(&args.interfaces)?;
    output::print_text(&if args.interfaces.is_empty() {
        format!("detached; pins removed from {}\n", cli.bpffs.display())
    } else {
        format!("detached {}\n", args.interfaces.join(","))
    })
}

pub fn log(cli: &Cli, args: &LogArgs) -> Result<()> {
    signals::catch_stop();
    Gateway::new(&cli.bpffs).follow_log(
        args.seconds.map(Duration::from_secs),
        &signals::stop_requested,
        &|n| eprintln!("following the event log of {n} program load(s); Ctrl-C to stop"),
        &mut |line| println!("{line}"),
    )
}

#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// Print each change handled, with the wall-clock time in µs.
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn follow(cli: &Cli, args: &FollowArgs) -> Result<()> {
    signals::catch_stop();
    Gateway::new(&cli.bpffs).follow(args.verbose, &signals::stop_requested)
}

pub fn status(cli: &Cli) -> Result<()> {
    let full = Gateway::new(&cli.bpffs).status(&cli.store_spec()?)?;
    if cli.format.is_json() {
        return output::print_one(&cli.format, &full);
    }
    let st = &full.dataplane;
    let rows: Vec<Vec<String>> = st
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.ifindex.to_string(),
                format!("{:?}", i.role).to_lowercase(),
                i.mode.as_str().to_string(),
                i.program_id.to_string(),
                i.mac.clone(),
                i.tx_dropped.to_string(),
                i.tx_errors.to_string(),
                i.xdp_errors
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                i.send_drops
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();
    let head = [
        "interface",
        "ifindex",
        "role",
        "mode",
        "program_id",
        "mac",
        "tx_dropped",
        "tx_errors",
        "xdp_errors",
        "send_drops",
    ];
    output::print_table(&cli.format, &head, &rows, st)?;
    let sync = match (&full.sync, &full.sync_error) {
        (Some(r), _) => sync_line(r),
        (None, Some(e)) => format!("not compared: {e}"),
        (None, None) => "not compared".to_owned(),
    };
    let hops = &st.next_hops;
    let next_hops = if hops.following {
        format!(
            "{} of {} associations cached, default route {} (epoch {})",
            hops.cached,
            st.associations,
            if hops.default_route {
                "cached"
            } else {
                "not cached"
            },
            hops.epoch
        )
    } else {
        "no follower: every packet asks the FIB (run `floatip follow` or the agent)".to_owned()
    };
    let mut drops = String::new();
    for i in &st.interfaces {
        if let Some(n) = i.send_drops.filter(|n| *n > 0) {
            drops.push_str(&format!(
                "send drops: the kernel refused to send {n} frames that {}'s program \
                 redirected (into a veth whose peer runs neither XDP nor GRO, or a NIC without \
                 XDP transmit)\n",
                i.name
            ));
        }
    }
    output::print_text(&format!(
        "\nassociations: {} of {} ({} counters, layout v{}, generation {})\ndatabase: {} ({}): {sync}\nnext hops: {next_hops}\n{drops}\n",
        st.associations,
        st.max_associations,
        st.association_counters.as_str(),
        st.layout_version,
        st.generation,
        full.state_database.display(),
        st.db_identity
    ))?;
    if let Some(gateways) = &full.gateways {
        let rows: Vec<Vec<String>> = gateways
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    if g.alive { "alive" } else { "gone" }.to_owned(),
                    g.applied_revision.to_string(),
                    g.pools.join(","),
                ]
            })
            .collect();
        output::print_text(&format!(
            "gateway group (store revision {}):\n",
            full.store_revision.unwrap_or(0)
        ))?;
        output::print_table(
            &cli.format,
            &["gateway", "state", "applied_revision", "owns"],
            &rows,
            &gateways,
        )?;
        output::print_text("\n")?;
    }
    let counters: Vec<Vec<String>> = st
        .counters
        .iter()
        .map(|(name, v)| vec![name.to_string(), v.to_string()])
        .collect();
    output::print_table(
        &cli.format,
        &["outcome", "packets"],
        &counters,
        &st.counters,
    )
}

pub fn nat(cli: &Cli, cmd: &NatCmd) -> Result<()> {
    let gw = Gateway::new(&cli.bpffs);
    match cmd {
        NatCmd::Add { floating, fixed } => {
            gw.nat_add(*floating, *fixed)?;
            output::print_text(&format!("{floating} -> {fixed}\n"))
        }
        NatCmd::Del { floating } => {
            let fixed = gw.nat_del(*floating)?;
            output::print_text(&format!("removed {floating} -> {fixed}\n"))
        }
        NatCmd::List => {
            let pairs = gw.nat_list()?;
            let rows: Vec<Vec<String>> = pairs
                .iter()
                .map(|p| vec![p.floating.to_string(), p.fixed.to_string()])
                .collect();
            output::print_table(&cli.format, &["floating", "fixed"], &rows, &pairs)
        }
        NatCmd::Stats { floating } => {
            let stats = gw.nat_stats(*floating)?;
            let rows: Vec<Vec<String>> = stats
                .iter()
                .map(|s| {
                    vec![
                        s.floating.to_string(),
                        s.fixed.to_string(),
                        s.in_packets.to_string(),
                        s.in_bytes.to_string(),
                        s.out_packets.to_string(),
                        s.out_bytes.to_string(),
                    ]
                })
                .collect();
            let head = [
                "floating",
                "fixed",
                "in_packets",
                "in_bytes",
                "out_packets",
                "out_bytes",
            ];
            output::print_table(&cli.format, &head, &rows, &stats)
        }
    }
}

/// `clean`, or the state with how many floating IPs differ.
fn sync_line(r: &SyncReport) -> String {
    let n = r.differences.len();
    match r.state {
        SyncState::Clean => "clean".to_owned(),
        SyncState::Dirty => format!("dirty (a command was interrupted), {n} pairs differ"),
        SyncState::Drifted => format!(
            "drifted (generation {} in the maps, {} in the database), {n} pairs differ",
            r.maps_generation, r.database_generation
        ),
    }
}

/// `check`: the comparison; non-zero exit when the maps differ from the database.
pub fn check(cli: &Cli) -> Result<()> {
    let report = Control::open(&cli.store_spec()?, &cli.bpffs)?.check()?;
    print_sync(cli, &report)?;
    if report.state != SyncState::Clean {
        fail!(
            Conflict,
            "the maps are not in step with the database: {}",
            sync_line(&report)
        );
    }
    Ok(())
}

/// `repair`: makes the maps match the database; prints what differed.
pub fn repair(cli: &Cli) -> Result<()> {
    let report = Control::open(&cli.store_spec()?, &cli.bpffs)?.repair()?;
    print_sync(cli, &report)?;
    if cli.format.style == output::Style::Table {
        let n = report.differences.len();
        output::print_text(&match report.state {
            SyncState::Clean => "nothing to repair\n".to_owned(),
            _ => format!("repaired {n} floating IPs ({})\n", sync_line(&report)),
        })?;
    }
    Ok(())
}

fn print_sync(cli: &Cli, report: &SyncReport) -> Result<()> {
    let dash = |v: Option<Ipv4Addr>| v.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let rows: Vec<Vec<String>> = report
        .differences
        .iter()
        .map(|d| {
            vec![
                d.floating.to_string(),
                dash(d.database),
                dash(d.maps),
                dash(d.maps_reverse),
            ]
        })
        .collect();
    if cli.format.is_json() {
        return output::print_one(&cli.format, report);
    }
    if rows.is_empty() {
        return Ok(());
    }
    output::print_table(
        &cli.format,
        &["floating", "database", "maps", "maps_reverse"],
        &rows,
        report,
    )
}
