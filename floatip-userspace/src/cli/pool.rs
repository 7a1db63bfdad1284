//! `floatip pool ...`: parse and print; the work is in `control`.

use anyhow::Result;
use clap::Subcommand;

use crate::{addr::PoolRanges, control::Control, error::invalid, output};

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Create a pool of floating IPs.
    Create {
        /// Name of the pool.
        name: String,
        /// Addresses of the pool: a CIDR (its network and broadcast addresses are left out,
        /// except for /31 and /32) or FIRST-LAST. Repeatable.
        #[arg(long = "range", value_name = "CIDR|FIRST-LAST", required = true)]
        ranges: Vec<String>,
        /// An address of the ranges not to hand out. Repeatable.
        #[arg(long = "exclude", value_name = "IP")]
        excludes: Vec<String>,
        /// External interface the pool's addresses arrive on.
        #[arg(long, value_name = "IFACE")]
        external: Option<String>,
        /// A description (at most 255 characters).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List pools with their address counts.
    List,
    /// Show one pool with its address counts.
    Show { name: String },
    /// Change a pool's description; prints the pool.
    Set {
        name: String,
        /// The new description ("" leaves it empty).
        #[arg(long, value_name = "TEXT", required = true)]
        description: String,
    },
    /// Delete a pool that has no allocated floating IPs.
    Delete { name: String },
}

pub fn run(cli: &super::Cli, cmd: &PoolCmd) -> Result<()> {
    // Arguments are parsed before the state is opened, so a typo creates nothing.
    let ranges = match cmd {
        PoolCmd::Create {
            ranges, excludes, ..
        } => Some(invalid(PoolRanges::parse(ranges, excludes))?),
        _ => None,
    };
    let mut control = Control::open(&cli.store_spec()?, &cli.bpffs)?;
    match cmd {
        PoolCmd::Create {
            name,
            external,
            description,
            ..
        } => {
            let ranges = ranges.expect("parsed above");
            output::print_one(
                &cli.format,
                &control.pool_create(name, &ranges, external.as_deref(), description.as_deref())?,
            )
        }
        PoolCmd::List => output::print_list(&cli.format, &control.pool_list()?),
        PoolCmd::Show { name } => output::print_one(&cli.format, &control.pool_show(name)?),
        PoolCmd::Set { name, description } => output::print_one(
            &cli.format,
            &control.pool_set_description(name, Some(description))?,
        ),
        PoolCmd::Delete { name } => control.pool_delete(name),
    }
}
