//! `floatip quota ...`: parse and print; the work is in `control`.

use anyhow::Result;
use clap::Subcommand;

use crate::{control::Control, output};

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Limit the number of floating IPs a project may hold.
    Set {
        project: String,
        /// Most floating IPs the project may hold (projects without a quota are unlimited).
        #[arg(long = "floating-ips", value_name = "N")]
        floating_ips: u32,
    },
    /// Show usage and limit of one project, or of every project.
    Show { project: Option<String> },
}

pub fn run(cli: &super::Cli, cmd: &QuotaCmd) -> Result<()> {
    let mut control = Control::open(&cli.store_spec()?, &cli.bpffs)?;
    match cmd {
        QuotaCmd::Set {
            project,
            floating_ips,
        } => output::print_one(&cli.format, &control.quota_set(project, *floating_ips)?),
        QuotaCmd::Show {
            project: Some(project),
        } => output::print_one(&cli.format, &control.quota_show(project)?),
        QuotaCmd::Show { project: None } => output::print_list(&cli.format, &control.quota_list()?),
    }
}
