//! Builds the eBPF objects of `floatip-ebpf` with aya-build so that the
//! binary can embed them.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // With AYA_BUILD_SKIP (fast `cargo check`/unit tests), embed empty objects.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        for name in ["floatip", "floatip-bench"] {
            std::fs::write(out.join(name), [])?;
        }
        return Ok(());
    }
    // aya-build relays every line the inner cargo prints on stderr as a `cargo:warning`, and
    // cargo shows those of a workspace member: ~40 "warning: Compiling core ..." lines that
    // are progress, not warnings. Quiet, the inner cargo prints only what is wrong; compiler
    // diagnostics come through its JSON messages, which aya-build relays as before.
    // SAFETY: nothing else runs in this process yet.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let cargo_metadata::Metadata {
        packages,
        workspace_root,
        ..
    } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "floatip-ebpf")
        .ok_or_else(|| anyhow!("floatip-ebpf package not found"))?;
    // What the objects are built from, instead of a build-dependency on floatip-ebpf: as one,
    // its host build would take the features the rest of the build gives its dependencies,
    // which differ between `-p floatip-userspace` and `--workspace`, and each set would build
    // the objects again. aya-build adds floatip-ebpf's own directory.
    for dep in &ebpf.dependencies {
        if let Some(path) = &dep.path {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed={workspace_root}/Cargo.lock");
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
