//! Builds the eBPF objects of `floatip-ebpf` with aya-build so that the
//! binary can embed them.
use std::{fs::File, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // With AYA_BUILD_SKIP (fast `cargo check`/unit tests), embed empty objects.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
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
    // aya-build runs its inner cargo in a target directory under OUT_DIR. OUT_DIR changes with
    // the hash of this build script, which covers the features of its host dependencies
    // (`syn`'s, via aya-build's serde, are unified with every proc macro of the build), and
    // those differ between `-p floatip-userspace` and `--workspace`: each would compile the
    // objects, and `core`, from scratch. So aya-build gets one directory next to the build
    // scripts' own, shared by every hash: a later run finds the inner build fresh.
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let shared = out_dir
        .ancestors()
        .nth(2)
        .ok_or_else(|| anyhow!("OUT_DIR {} too short", out_dir.display()))?
        .join("floatip-object-ebpf");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Held until the objects are copied out, so that no run copies one another is writing.
    let lock = File::create(shared.join("lock")).context("creating the lock file")?;
    lock.lock().context("locking the eBPF build directory")?;
    // SAFETY: as above, this process has no other thread.
    unsafe { std::env::set_var("OUT_DIR", &shared) };
    aya_build::build_ebpf([package], Toolchain::default())?;
    for name in ["floatip", "floatip-bench"] {
        std::fs::copy(shared.join(name), out_dir.join(name))
            .with_context(|| format!("copying {name} from {}", shared.display()))?;
    }
    Ok(())
}
