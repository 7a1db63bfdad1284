//! Builds the eBPF objects of `floatip-ebpf` with aya-build so that the
//! binary can embed them.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // With AYA_BUILD_SKIP (fast `cargo check`/unit tests), embed empty objects.
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        for name in ["floatip", "floatip-bench"] {
            std::fs::write(out.join(name), [])?;
        }
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "floatip-ebpf")
        .ok_or_else(|| anyhow!("floatip-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent of {}", ebpf.manifest_path))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
