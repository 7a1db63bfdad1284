//! `cargo xtask lint`: formatting and clippy, kept apart from `test`.

use anyhow::Result;

use crate::{setup, util};

pub fn lint() -> Result<()> {
    // clippy runs floatip-object's build script, which needs bpf-linker.
    setup::setup()?;
    // Nightly rustfmt: rustfmt.toml uses unstable options (import grouping).
    util::run(util::nightly_cargo().args(["fmt", "--all", "--", "--check"]))?;
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "floatip-ebpf",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
