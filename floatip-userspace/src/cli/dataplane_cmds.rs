//! `attach`, `detach`, `status` and the `nat` plumbing: parse and print.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use floatip_common::DEFAULT_MAX_ASSOCIATIONS;

use super::{Cli, Format};
use crate::{
    control::{self, Control},
    dataplane::{self, AttachOptions, Dataplane, Mode},
    output::{self, render_table},
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
    /// Size of the association maps.
    #[arg(long, default_value_t = DEFAULT_MAX_ASSOCIATIONS)]
    pub max_associations: u32,
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
    };
    Dataplane::attach(&cli.bpffs, &opts)?;
    // The database is the source of truth: fresh maps (after a reboot) get
    // every pool and association back.
    let restored = Control::open(&cli.state, &cli.bpffs)?.resync()?;
    println!(
        "attached in {} mode: external {}, internal {}; {restored} associations loaded",
        opts.mode.as_str(),
        opts.external.join(","),
        opts.internal.join(",")
    );
    Ok(())
}

pub fn detach(cli: &Cli, args: &DetachArgs) -> Result<()> {
    Dataplane::detach(&cli.bpffs, &args.interfaces)?;
    if args.interfaces.is_empty() {
        println!("detached; pins removed from {}", cli.bpffs.display());
    } else {
        println!("detached {}", args.interfaces.join(","));
    }
    Ok(())
}

/// Set by SIGINT/SIGTERM so `log` can switch the programs' logging off
/// before it exits.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn log(cli: &Cli, args: &LogArgs) -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut print = |line: String| {
        println!("{line}");
    };
    dataplane::log::follow(
        &cli.bpffs,
        args.seconds.map(Duration::from_secs),
        &|| STOP.load(Ordering::Relaxed),
        &|n| eprintln!("following the event log of {n} program load(s); Ctrl-C to stop"),
        &mut print,
    )
}

pub fn status(cli: &Cli) -> Result<()> {
    let st = Dataplane::open(&cli.bpffs)?.status()?;
    if cli.format == Format::Json {
        return output::print_one(cli.format, &st);
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let head: &[&str] = &["interface", "ifindex", "role", "mode", "program_id", "mac"];
    for i in &st.interfaces {
        rows.push(vec![
            i.name.clone(),
            i.ifindex.to_string(),
            format!("{:?}", i.role).to_lowercase(),
            i.mode.as_str().to_string(),
            i.program_id.to_string(),
            i.mac.clone(),
        ]);
    }
    print!("{}", render_table(head, &rows));
    println!(
        "\nassociations: {} of {} (layout v{}, generation {})\n",
        st.associations, st.max_associations, st.layout_version, st.generation
    );
    let mut crows: Vec<Vec<String>> = Vec::new();
    let chead: &[&str] = &["outcome", "packets"];
    for (name, v) in &st.counters {
        crows.push(vec![name.to_string(), v.to_string()]);
    }
    print!("{}", render_table(chead, &crows));
    Ok(())
}

pub fn nat(cli: &Cli, cmd: &NatCmd) -> Result<()> {
    let mut dp = Dataplane::open(&cli.bpffs)?;
    match cmd {
        NatCmd::Add { floating, fixed } => {
            // Plumbing bypasses the database: mark the maps so the next
            // control-plane command compares and repairs them.
            dp.set_generation(control::GENERATION_DIRTY)?;
            dp.nat_add(*floating, *fixed)?;
            control::announce(&dp, *floating);
            println!("{floating} -> {fixed}");
        }
        NatCmd::Del { floating } => {
            dp.set_generation(control::GENERATION_DIRTY)?;
            let fixed = dp.nat_del(*floating)?;
            println!("removed {floating} -> {fixed}");
        }
        NatCmd::List => {
            let pairs = dp.nat_list()?;
            if cli.format == Format::Json {
                return output::print_one(cli.format, &pairs);
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            let head: &[&str] = &["floating", "fixed"];
            for p in pairs {
                rows.push(vec![p.floating.to_string(), p.fixed.to_string()]);
            }
            print!("{}", render_table(head, &rows));
        }
        NatCmd::Stats { floating } => {
            let stats = dp.pair_stats(*floating)?;
            if cli.format == Format::Json {
                return output::print_one(cli.format, &stats);
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            let head: &[&str] = &[
                "floating",
                "fixed",
                "in_packets",
                "in_bytes",
                "out_packets",
                "out_bytes",
            ];
            for s in stats {
                rows.push(vec![
                    s.floating.to_string(),
                    s.fixed.to_string(),
                    s.in_packets.to_string(),
                    s.in_bytes.to_string(),
                    s.out_packets.to_string(),
                    s.out_bytes.to_string(),
                ]);
            }
            print!("{}", render_table(head, &rows));
        }
    }
    Ok(())
}
