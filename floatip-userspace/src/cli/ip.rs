//! `floatip ip ...`: parse and print; the work is in `control`.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use crate::{
    addr::{parse_bulk, parse_ipv4},
    control::{Associate, Control, IpChange, IpQuery, IpStatus},
    error::{fail, invalid},
    output,
};

/// `--status` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum StatusArg {
    /// Associated with a fixed IP.
    Active,
    /// Not associated.
    Down,
}

#[derive(Debug, Subcommand)]
pub enum IpCmd {
    /// Allocate a floating IP from a pool: the lowest free address unless --address.
    Create {
        pool: String,
        /// Allocate this address of the pool.
        #[arg(long, value_name = "IP")]
        address: Option<String>,
        /// Project the address belongs to (counted against its quota).
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List floating IPs.
    List {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        project: Option<String>,
        #[arg(long, value_enum, ignore_case = true)]
        status: Option<StatusArg>,
        /// Only this floating IP.
        #[arg(long, value_name = "IP")]
        floating_ip_address: Option<String>,
        /// Only the floating IP associated with this fixed IP.
        #[arg(long, value_name = "IP")]
        fixed_ip_address: Option<String>,
        /// Only floating IPs associated with this instance.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// Only floating IPs that have all of these tags.
        #[arg(long, value_name = "TAG,...", value_delimiter = ',')]
        tags: Vec<String>,
        /// Only floating IPs that have at least one of these tags.
        #[arg(long, value_name = "TAG,...", value_delimiter = ',')]
        any_tags: Vec<String>,
        /// Leave out floating IPs that have all of these tags.
        #[arg(long, value_name = "TAG,...", value_delimiter = ',')]
        not_tags: Vec<String>,
        /// Leave out floating IPs that have any of these tags.
        #[arg(long, value_name = "TAG,...", value_delimiter = ',')]
        not_any_tags: Vec<String>,
    },
    /// Show one floating IP.
    Show {
        /// The floating IP's address or its id.
        floating: String,
        /// Act for this project: other projects' addresses are not found.
        #[arg(long)]
        project: Option<String>,
    },
    /// Associate a floating IP with an instance's fixed IP (or many, with --from-file).
    Associate {
        #[arg(required_unless_present = "from_file")]
        floating: Option<String>,
        #[arg(required_unless_present = "from_file")]
        fixed: Option<String>,
        /// Name of the instance that owns the fixed IP.
        #[arg(long)]
        instance: Option<String>,
        /// Act for this project: other projects' addresses are not found.
        #[arg(long)]
        project: Option<String>,
        /// Move the floating IP if it is already associated.
        #[arg(long)]
        force: bool,
        /// Associate every `FLOATING FIXED [INSTANCE]` line of FILE in one transaction.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["floating", "fixed", "instance", "force"])]
        from_file: Option<PathBuf>,
    },
    /// Change a floating IP's description or add tags; prints the record.
    #[command(arg_required_else_help = true)]
    Set {
        /// The floating IP's address or its id.
        floating: String,
        /// Set the description (at most 255 characters).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Add this tag (repeatable); one the address has already is kept.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Remove every tag first (with --tag: replace them).
        #[arg(long)]
        no_tag: bool,
        /// Act for this project: other projects' addresses are not found.
        #[arg(long)]
        project: Option<String>,
    },
    /// Remove tags or the description of a floating IP; prints the record.
    #[command(arg_required_else_help = true)]
    Unset {
        /// The floating IP's address or its id.
        floating: String,
        /// Remove this tag (repeatable); one the address does not have is ignored.
        #[arg(long = "tag", value_name = "TAG", conflicts_with = "all_tag")]
        tags: Vec<String>,
        /// Remove every tag.
        #[arg(long)]
        all_tag: bool,
        /// Clear the description.
        #[arg(long)]
        description: bool,
        /// Act for this project: other projects' addresses are not found.
        #[arg(long)]
        project: Option<String>,
    },
    /// Remove the association of a floating IP.
    Disassociate {
        floating: String,
        /// Act for this project: other projects' addresses are not found.
        #[arg(long)]
        project: Option<String>,
    },
    /// Release a floating IP (disassociating it first).
    /// Release floating IPs (disassociating them first); each is reported, and the command
    /// fails if any of them could not be deleted.
    Delete {
        /// Addresses or ids.
        #[arg(required = true)]
        floating: Vec<String>,
        /// Act for this project: other projects' addresses are not found.
        #[arg(long)]
        project: Option<String>,
    },
}

fn ip(s: &Option<String>) -> Result<Option<Ipv4Addr>> {
    invalid(s.as_deref().map(parse_ipv4).transpose())
}

pub fn run(cli: &super::Cli, cmd: &IpCmd) -> Result<()> {
    let fmt = &cli.format;
    let open = || Control::open(&cli.store_spec()?, &cli.bpffs);
    match cmd {
        IpCmd::Create {
            pool,
            address,
            project,
            description,
        } => {
            let address = ip(address)?;
            let created =
                open()?.ip_create(pool, address, project.as_deref(), description.as_deref())?;
            output::print_one(fmt, &created)
        }
        IpCmd::List {
            pool,
            project,
            status,
            floating_ip_address,
            fixed_ip_address,
            instance,
            tags,
            any_tags,
            not_tags,
            not_any_tags,
        } => {
            let query = IpQuery {
                pool: pool.as_deref(),
                project: project.as_deref(),
                status: status.map(|s| match s {
                    StatusArg::Active => IpStatus::Active,
                    StatusArg::Down => IpStatus::Down,
                }),
                floating_ip: ip(floating_ip_address)?,
                fixed_ip: ip(fixed_ip_address)?,
                instance: instance.as_deref(),
                tags,
                any_tags,
                not_tags,
                not_any_tags,
            };
            output::print_list(fmt, &open()?.ip_list(&query)?)
        }
        IpCmd::Set {
            floating,
            description,
            tags,
            no_tag,
            project,
        } => {
            let change = IpChange {
                description: description.as_deref().map(Some),
                clear_tags: *no_tag,
                add_tags: tags,
                ..Default::default()
            };
            update(fmt, open()?, floating, project.as_deref(), &change)
        }
        IpCmd::Unset {
            floating,
            tags,
            all_tag,
            description,
            project,
        } => {
            let change = IpChange {
                description: description.then_some(None),
                clear_tags: *all_tag,
                remove_tags: tags,
                ..Default::default()
            };
            update(fmt, open()?, floating, project.as_deref(), &change)
        }
        IpCmd::Show { floating, project } => {
            let mut control = open()?;
            let floating = control.ip_resolve(floating, project.as_deref())?;
            output::print_one(fmt, &control.ip_show(floating, project.as_deref())?)
        }
        IpCmd::Associate {
            from_file: Some(path),
            project,
            ..
        } => {
            let text = read_bounded(path)?;
            let entries = invalid(parse_bulk(&text).with_context(|| path.display().to_string()))?;
            let records = open()?
                .ip_associate_bulk(&entries, project.as_deref())
                .with_context(|| path.display().to_string())?;
            output::print_list(fmt, &records)
        }
        IpCmd::Associate {
            floating,
            fixed,
            instance,
            project,
            force,
            from_file: None,
        } => {
            let (Some(floating), Some(fixed)) = (ip(floating)?, ip(fixed)?) else {
                unreachable!("clap requires both without --from-file")
            };
            let req = Associate {
                floating,
                fixed,
                instance: instance.as_deref(),
                project: project.as_deref(),
                force: *force,
            };
            output::print_one(fmt, &open()?.ip_associate(&req)?)
        }
        IpCmd::Disassociate { floating, project } => {
            let floating = invalid(parse_ipv4(floating))?;
            output::print_one(fmt, &open()?.ip_disassociate(floating, project.as_deref())?)
        }
        IpCmd::Delete { floating, project } => {
            let mut control = open()?;
            let mut failed = Vec::new();
            for key in floating {
                let result = control
                    .ip_resolve(key, project.as_deref())
                    .and_then(|ip| control.ip_delete(ip, project.as_deref()));
                match result {
                    Ok(record) => output::print_text(&format!(
                        "deleted {} ({})\n",
                        record.floating_ip_address, record.id
                    ))?,
                    Err(e) if floating.len() == 1 => return Err(e),
                    Err(e) => {
                        eprintln!("floatip: {key}: {e:#}");
                        failed.push(key.as_str());
                    }
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            fail!(
                NotFound,
                "{} of {} floating IPs were not deleted: {}",
                failed.len(),
                floating.len(),
                failed.join(", ")
            )
        }
    }
}

/// `ip set`/`ip unset`: the record named by `key` (address or id), changed and printed.
fn update(
    fmt: &output::Format,
    mut control: Control,
    key: &str,
    project: Option<&str>,
    change: &IpChange<'_>,
) -> Result<()> {
    let floating = control.ip_resolve(key, project)?;
    let id = control.ip_show(floating, project)?.id;
    control.ip_update(id, project, change)?;
    output::print_one(fmt, &control.ip_show(floating, project)?)
}

/// Most bytes `--from-file` reads: a million lines of the longest form fit.
const MAX_BULK_BYTES: u64 = 64 << 20;

/// Reads `path` as text, refusing more than [`MAX_BULK_BYTES`] (`/dev/zero` must not fill
/// the memory).
fn read_bounded(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BULK_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_BULK_BYTES {
        fail!(
            Invalid,
            "{} is larger than {} MiB; split it",
            path.display(),
            MAX_BULK_BYTES >> 20
        );
    }
    Ok(text)
}
