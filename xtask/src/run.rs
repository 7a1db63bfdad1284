//! `cargo xtask demo|bench` (and the packet part of `fuzz`): run a binary of the `tests` crate.

use anyhow::Result;
use clap::Args;

use crate::{build, util};

#[derive(Args)]
pub struct BinArgs {
    /// Passed unchanged to the binary (including `--help`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Setup + build, then `cargo run --release -p tests --bin <name> -- <args>`.
pub fn run_tests_bin(name: &str, args: &[String]) -> Result<()> {
    build::build()?;
    // `cargo run --bin X` builds X alone; the binaries use their siblings
    // (the demo and the benchmarks start `netprobe` in namespaces).
    util::run(util::cargo().args(["build", "--release", "-p", "tests", "--bins"]))?;
    // Ctrl-C reaches the whole foreground process group: the binary tears
    // its namespaces down on SIGINT, and xtask must outlive that teardown
    // instead of handing the shell back while it still runs.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    util::private_mounts()?;
    util::run(
        util::cargo()
            .args(["run", "--release", "-p", "tests", "--bin", name, "--"])
            .args(args),
    )
}
