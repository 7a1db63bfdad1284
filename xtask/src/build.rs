//! `cargo xtask build`.

use anyhow::Result;

use crate::{setup, util};

pub fn build() -> Result<()> {
    setup::setup()?;
    // floatip-userspace's build script compiles the eBPF object with
    // aya-build, which needs bpf-linker on PATH (util::cmd provides it).
    util::run(util::cargo().args(["build", "--release", "-p", "floatip-userspace"]))
}
