//! `floatip user ...`: API users. Parse and print; the work is in `control::users`.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};

use crate::{
    control::{Control, users::Role},
    output,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything, for every project.
    Admin,
    /// Its own project's floating IPs and ports.
    Member,
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user of the agent's API; the password is the first line of standard input.
    Create {
        name: String,
        /// The project the user acts for.
        #[arg(long)]
        project: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List users.
    List,
    /// Delete a user.
    Delete { name: String },
}

/// The first line of standard input, without its line end.
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!("no password on standard input (give it as the first line)");
    }
    Ok(password.to_owned())
}

pub fn run(cli: &super::Cli, cmd: &UserCmd) -> Result<()> {
    // Arguments and the password are read before the state is opened: a mistake creates nothing.
    let password = match cmd {
        UserCmd::Create { .. } => Some(read_password()?),
        _ => None,
    };
    let mut control = Control::open(&cli.store_spec()?, &cli.bpffs)?;
    match cmd {
        UserCmd::Create {
            name,
            project,
            role,
        } => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Member => Role::Member,
            };
            let user = control.user_create(
                name,
                project,
                role,
                password.as_deref().expect("read above"),
            )?;
            output::print_one(&cli.format, &user)
        }
        UserCmd::List => output::print_list(&cli.format, &control.user_list()?),
        UserCmd::Delete { name } => control.user_delete(name),
    }
}
