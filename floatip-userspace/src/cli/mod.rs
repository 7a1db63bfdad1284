//! Argument parsing and printing. No logic lives here: every command calls the control layer
//! (`control::Control` for pools, addresses and quotas; `control::Gateway` for attach, detach,
//! status, the event log and the nat plumbing).

mod agent;
mod bench;
mod dataplane_cmds;
mod docs;
mod ip;
mod pool;
mod quota;
mod signals;
mod user;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{error, output::Format, store::StoreSpec};

#[derive(Debug, Parser)]
#[command(
    name = "floatip",
    version,
    about = "Cloud floating IPs on an eBPF/XDP fast path"
)]
pub struct Cli {
    /// bpffs directory holding floatip's pinned maps and links.
    #[arg(
        long,
        global = true,
        env = "FLOATIP_BPFFS",
        default_value = "/sys/fs/bpf/floatip"
    )]
    pub bpffs: PathBuf,
    /// SQLite database holding pools, addresses and associations.
    #[arg(
        long,
        global = true,
        env = "FLOATIP_STATE",
        default_value = "/var/lib/floatip/state.db"
    )]
    pub state: PathBuf,
    /// Where the state lives: etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster) or a SQLite
    /// path; default: the SQLite database of --state.
    #[arg(long, global = true, env = "FLOATIP_STORE", value_name = "URL|PATH")]
    pub store: Option<String>,
    #[command(flatten)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs onto the gateway's NICs, pin them and exit.
    Attach(dataplane_cmds::AttachArgs),
    /// Remove programs, links and pins.
    Detach(dataplane_cmds::DetachArgs),
    /// Interfaces, mode, program ids, associations and per-outcome counters.
    Status,
    /// Follow the programs' event log (drops, malformed frames, packets
    /// left to the kernel) until Ctrl-C; the programs log only meanwhile.
    Log(dataplane_cmds::LogArgs),
    /// Keep the next-hop cache in step with the kernel's routes and
    /// neighbours until Ctrl-C (the agent does this itself).
    Follow(dataplane_cmds::FollowArgs),
    /// Compare the maps with the database (exit 4 when they differ).
    Check,
    /// Make the maps match the database; print what differed.
    Repair,
    /// Plumbing on the pinned maps.
    #[command(subcommand)]
    Nat(dataplane_cmds::NatCmd),
    /// Floating IP pools (admin).
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Floating IP addresses.
    #[command(subcommand)]
    Ip(ip::IpCmd),
    /// Per-project quotas (admin).
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    /// API users of the agent (admin).
    #[command(subcommand)]
    User(user::UserCmd),
    /// Serve the Neutron-compatible API (see /etc/floatip/agent.toml).
    Agent(crate::agent::AgentArgs),
    /// Benchmark tools: `bench gen`, the traffic generator.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Write the man pages (DIR/man) and shell completions (DIR/completions); for packaging.
    #[command(hide = true)]
    GenDocs { dir: PathBuf },
}

impl Cli {
    /// The store `--store` names, else the SQLite database of `--state`. Parsed here rather
    /// than by clap, so that a bad URL is the usual one-line error.
    pub fn store_spec(&self) -> anyhow::Result<StoreSpec> {
        match &self.store {
            Some(text) => error::invalid(StoreSpec::parse(text)),
            None => Ok(StoreSpec::Sqlite(self.state.clone())),
        }
    }
}

/// Parses the command line, runs the command and turns any error into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Attach(args) => dataplane_cmds::attach(&cli, args),
        Command::Detach(args) => dataplane_cmds::detach(&cli, args),
        Command::Status => dataplane_cmds::status(&cli),
        Command::Follow(args) => dataplane_cmds::follow(&cli, args),
        Command::Check => dataplane_cmds::check(&cli),
        Command::Repair => dataplane_cmds::repair(&cli),
        Command::Log(args) => dataplane_cmds::log(&cli, args),
        Command::Nat(cmd) => dataplane_cmds::nat(&cli, cmd),
        Command::Pool(cmd) => pool::run(&cli, cmd),
        Command::Ip(cmd) => ip::run(&cli, cmd),
        Command::Quota(cmd) => quota::run(&cli, cmd),
        Command::User(cmd) => user::run(&cli, cmd),
        Command::Agent(args) => agent::run(&cli, args),
        Command::Bench(cmd) => bench::run(&cli, cmd),
        Command::GenDocs { dir } => docs::generate(dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let kind = error::kind_of(&err);
            // One line: the outermost context and its causes, joined.
            let message = format!("{err:#}");
            if cli.format.is_json() {
                let body = serde_json::json!({
                    "error": {"type": kind.as_str(), "message": message}
                });
                eprintln!("{body}");
            } else {
                eprintln!("floatip: {message}");
            }
            ExitCode::from(kind.exit_code())
        }
    }
}
