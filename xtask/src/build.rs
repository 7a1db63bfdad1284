//! `cargo xtask build` and `cargo xtask dist`.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

pub fn build() -> Result<()> {
    setup::setup()?;
    release()
}

/// The release `floatip` binary alone (no test features), as users get it.
pub fn release() -> Result<()> {
    // floatip-object's build script compiles the eBPF object with
    // aya-build, which needs bpf-linker on PATH (util::cmd provides it).
    util::run(util::cargo().args(["build", "--release", "-p", "floatip-userspace"]))
}

/// `cargo xtask dist`: setup, then the Debian package.
pub fn dist() -> Result<()> {
    setup::setup()?;
    let deb = deb()?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the release binary, generates its man pages and completions from its own clap
/// definitions, and packages them with cargo-deb (metadata in floatip-userspace/Cargo.toml).
/// Returns the package's path. Expects [`setup::setup`] to have run.
pub fn deb() -> Result<PathBuf> {
    release()?;
    let release_dir = util::target_dir().join("release");
    let docs = release_dir.join("floatip-docs");
    // Pages of subcommands that no longer exist must not be packaged.
    match std::fs::remove_dir_all(&docs) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", docs.display()));
        }
        _ => {}
    }
    util::run(
        util::cmd(release_dir.join("floatip"))
            .arg("gen-docs")
            .arg(&docs),
    )?;
    // --no-build: the binary above is the one the pages describe.
    let out = util::output(util::cargo().args(["deb", "--no-build", "-p", "floatip-userspace"]))?;
    let Some(path) = out.lines().rev().find(|l| l.ends_with(".deb")) else {
        bail!("cargo deb printed no package path:\n{out}");
    };
    Ok(PathBuf::from(path.trim()))
}
