//! `cargo xtask test`: the README's (and CI's) test command.

use anyhow::{Result, bail};

use crate::{build, setup, util};

pub fn test(packages: &[String], args: &[String]) -> Result<()> {
    // Checked first so a non-root run fails immediately with one clear line
    // instead of deep inside a test.
    if !util::is_root() {
        bail!(
            "tests create network namespaces and must run as root (e.g. `sudo -E cargo xtask test`)"
        );
    }
    setup::setup()?;
    // The packaging test installs the .deb; built first, because it leaves the release
    // binary without test features in target/release, which the build below replaces.
    build::deb()?;
    // The namespace and control-plane tests drive the real `floatip` binary,
    // which `cargo test` does not build for another package's tests. Built
    // for the whole workspace so it carries the same features (failpoints,
    // turned on by the tests crate) as the test build and is not rebuilt.
    let mut build = util::cargo();
    build.args([
        "build",
        "--release",
        "--workspace",
        "--exclude",
        "floatip-ebpf",
        "--bins",
    ]);
    util::run(&mut build)?;
    util::private_mounts()?;
    let mut cargo = util::cargo();
    cargo.args(["test", "--release"]);
    if packages.is_empty() {
        // The eBPF crate only builds for the bpf target (via aya-build).
        cargo.args(["--workspace", "--exclude", "floatip-ebpf"]);
    } else {
        for package in packages {
            cargo.args(["-p", package]);
        }
    }
    // Thread count is left to the test binaries: namespace tests serialize themselves.
    util::run(cargo.arg("--").args(args))
}
