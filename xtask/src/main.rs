//! `cargo xtask <subcommand>`: the one entry point for setting up, building,
//! testing and running floatip, so the README and CI share the exact commands.

mod build;
mod fuzz;
mod lint;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "floatip developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh Debian bookworm machine lacks (idempotent, fast when done)
    Setup,
    /// Setup, then build the userspace daemon (and, via its build script, the eBPF object)
    Build,
    /// Setup, then the Debian package (cargo-deb): binary, man pages, completions, systemd
    /// unit, default configuration; prints its path (target/debian/floatip_*.deb)
    Dist,
    /// Setup, then run the workspace tests as root; extra args go to the test binaries
    Test {
        /// Test only these packages instead of the whole workspace
        #[arg(short, long = "package", value_name = "PKG")]
        packages: Vec<String>,
        /// Passed to the test binaries, e.g. a name filter or `--nocapture`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then `cargo fmt --check` (nightly, for rustfmt.toml) and clippy -D warnings
    Lint,
    /// Setup + build, then run the `demo` binary of the `tests` crate with the given args
    #[command(disable_help_flag = true)]
    Demo(run::BinArgs),
    /// Setup + build, then run the `bench` binary of the `tests` crate with the given args
    #[command(disable_help_flag = true)]
    Bench(run::BinArgs),
    /// The long fuzz runs: libFuzzer on the userspace parsers (installs cargo-fuzz on first
    /// use), then setup + build and the packet fuzz (the `fuzz` binary of the `tests` crate)
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build => build::build(),
        Command::Dist => build::dist(),
        Command::Test { packages, args } => test::test(&packages, &args),
        Command::Lint => lint::lint(),
        Command::Demo(bin) => run::run_tests_bin("demo", &bin.args),
        Command::Bench(bin) => run::run_tests_bin("bench", &bin.args),
        Command::Fuzz(args) => fuzz::fuzz(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line (context chain joined by ": ") so failures are easy to spot in CI logs.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
