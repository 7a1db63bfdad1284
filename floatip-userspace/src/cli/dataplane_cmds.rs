//! `attach`, `detach`, `status` and the `nat` plumbing: parse and print.

use std::net::Ipv4Addr;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use floatip_common::DEFAULT_MAX_ASSOCIATIONS;

use super::{Cli, Format};
use crate::{
    dataplane::{AttachOptions, Dataplane, Mode, Role},
    garp,
};

// TODO(lead): switch to the shared output module once it lands.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Self {
        Self {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }
    fn print(&self) {
        let mut w: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        for r in std::iter::once(&self.head).chain(self.rows.iter()) {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect();
            println!("{}", line.join("  ").trim_end());
        }
    }
}

mod output {
    pub fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

mod control {
    use super::*;
    pub fn attach(
        _state: &std::path::Path,
        bpffs: &std::path::Path,
        opts: &AttachOptions,
    ) -> Result<usize> {
        Dataplane::attach(bpffs, opts)?;
        Ok(0)
    }
    pub fn announce(dp: &Dataplane, ip: Ipv4Addr) {
        if let Ok(nics) = dp.nics(Role::External) {
            for (idx, mac) in nics {
                if let Err(e) = garp::announce(idx, &mac, ip) {
                    eprintln!("floatip: gratuitous ARP for {ip} failed: {e}");
                }
            }
        }
    }
}

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
    let restored = control::attach(&cli.state, &cli.bpffs, &opts)?;
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

pub fn status(cli: &Cli) -> Result<()> {
    let st = Dataplane::open(&cli.bpffs)?.status()?;
    if cli.format == Format::Json {
        return output::json(&st);
    }
    let mut t = Table::new(&["interface", "ifindex", "role", "mode", "program_id", "mac"]);
    for i in &st.interfaces {
        t.row(vec![
            i.name.clone(),
            i.ifindex.to_string(),
            format!("{:?}", i.role).to_lowercase(),
            i.mode.as_str().to_string(),
            i.program_id.to_string(),
            i.mac.clone(),
        ]);
    }
    t.print();
    println!(
        "\nassociations: {} of {} (layout v{}, generation {})\n",
        st.associations, st.max_associations, st.layout_version, st.generation
    );
    let mut c = Table::new(&["outcome", "packets"]);
    for (name, v) in &st.counters {
        c.row(vec![name.to_string(), v.to_string()]);
    }
    c.print();
    Ok(())
}

pub fn nat(cli: &Cli, cmd: &NatCmd) -> Result<()> {
    let mut dp = Dataplane::open(&cli.bpffs)?;
    match cmd {
        NatCmd::Add { floating, fixed } => {
            dp.nat_add(*floating, *fixed)?;
            control::announce(&dp, *floating);
            println!("{floating} -> {fixed}");
        }
        NatCmd::Del { floating } => {
            let fixed = dp.nat_del(*floating)?;
            println!("removed {floating} -> {fixed}");
        }
        NatCmd::List => {
            let pairs = dp.nat_list()?;
            if cli.format == Format::Json {
                return output::json(&pairs);
            }
            let mut t = Table::new(&["floating", "fixed"]);
            for p in pairs {
                t.row(vec![p.floating.to_string(), p.fixed.to_string()]);
            }
            t.print();
        }
        NatCmd::Stats { floating } => {
            let stats = dp.pair_stats(*floating)?;
            if cli.format == Format::Json {
                return output::json(&stats);
            }
            let mut t = Table::new(&[
                "floating",
                "fixed",
                "in_packets",
                "in_bytes",
                "out_packets",
                "out_bytes",
            ]);
            for s in stats {
                t.row(vec![
                    s.floating.to_string(),
                    s.fixed.to_string(),
                    s.in_packets.to_string(),
                    s.in_bytes.to_string(),
                    s.out_packets.to_string(),
                    s.out_bytes.to_string(),
                ]);
            }
            t.print();
        }
    }
    Ok(())
}
