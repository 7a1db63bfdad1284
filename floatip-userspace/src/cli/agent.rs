//! `floatip agent`: reads the configuration and runs the agent (in `agent`).

use anyhow::Result;
use clap::{CommandFactory, parser::ValueSource};

use crate::agent::{self, AgentArgs, Config};

pub fn run(cli: &super::Cli, args: &AgentArgs) -> Result<()> {
    // The global --state and --bpffs override the file only when given (flag or environment),
    // not by their defaults.
    let matches = super::Cli::command().get_matches();
    let given = |id: &str| {
        !matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        )
    };
    let config = Config::load(
        args,
        cli.store.as_deref(),
        given("state").then_some(cli.state.as_path()),
        given("bpffs").then_some(cli.bpffs.as_path()),
        (&cli.state, &cli.bpffs),
    )?;
    agent::run(config)
}
