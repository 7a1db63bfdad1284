//! `cargo xtask setup`: install what a fresh Debian bookworm machine lacks.
//!
//! Every step checks presence first with a cheap query, so a second run does
//! no network access and finishes in well under a second.

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// Debian packages the build, tests, demo and bench need. Add to this list.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // Linking bpf-linker when `cargo install` builds it; its g++ also compiles libFuzzer for
    // the parser fuzz (libfuzzer-sys).
    "build-essential",
    "pkg-config",
    "zlib1g-dev",
    // Network namespaces, veths, XDP inspection and traffic tools for tests.
    "iproute2",
    "iputils-ping",
    "ethtool",
    "nftables",
    "tcpdump",
    "netsniff-ng",
    "iperf3",
    "conntrack",
    "python3-scapy",
    "sqlite3",
    "traceroute",
    "netcat-openbsd",
    "bpftool",
    "socat",
    // The agent's tests: a virtualenv for the openstack CLI (python3-venv), TLS checks, and
    // promtool plus a Prometheus server for the metrics.
    "python3-venv",
    "prometheus",
    "curl",
    "openssl",
    // The packaging test: `man -w` finds the installed pages, `systemd-analyze verify` checks
    // the installed unit, dpkg-shlibdeps (dpkg-dev) gives cargo-deb the library dependencies.
    "man-db",
    "systemd",
    "dpkg-dev",
    // The etcd store backend: etcd-client's build script compiles etcd's .proto files with
    // protoc; the tests run real etcd members (etcd-server) and etcdctl (etcd-client).
    "protobuf-compiler",
    "etcd-server",
    "etcd-client",
];

/// The openstack CLI the agent's tests drive, pinned so that what was tried is what runs.
const PYTHON_PACKAGES: &[&str] = &[
    "python-openstackclient==10.5.0",
    "openstacksdk==4.22.0",
    "keystoneauth1==5.18.1",
];
const OPENSTACK_CLIENT_VERSION: &str = "10.5.0";

/// bpf-linker links against the nightly toolchain's own libLLVM; the cargo
/// feature and the library glob must name the same LLVM major version.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13";
/// Builds the Debian package (`cargo xtask dist`, and the packaging test); pinned so that
/// `--locked` builds what was tried.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Drives the coverage-guided parser fuzz; pinned so that `--locked` builds what was tried.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn setup() -> Result<()> {
    nightly_toolchain()?;
    debian_packages()?;
    let llvm_prefix = llvm_prefix()?;
    bpf_linker(&llvm_prefix)?;
    cargo_deb()?;
    openstack_client()
}

/// The project's virtualenv (`~/.local/share/floatip/venv`) with the openstack CLI; the
/// tests find it there (`tests::agent::openstack_bin`).
pub fn venv_dir() -> Result<PathBuf> {
    Ok(util::home()?.join(".local/share/floatip/venv"))
}

fn openstack_client() -> Result<()> {
    let venv = venv_dir()?;
    let found = util::probe(util::cmd(venv.join("bin/openstack")).arg("--version"));
    if found
        .as_deref()
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(OPENSTACK_CLIENT_VERSION))
    {
        println!(
            "ok: openstack CLI {OPENSTACK_CLIENT_VERSION} in {}",
            venv.display()
        );
        return Ok(());
    }
    println!(
        "installing: openstack CLI {OPENSTACK_CLIENT_VERSION} into {} (pip, about a minute)",
        venv.display()
    );
    // Debian's python3 (python3-venv), not whatever `python3` is first on PATH.
    util::run(
        util::cmd("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    util::run(
        util::cmd(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )
}

/// What `cargo xtask fuzz` needs for the parser fuzz. Not part of [`setup`]: only the fuzz
/// command uses cargo-fuzz, and CI's `test` should not pay for building it.
pub fn fuzz_setup() -> Result<()> {
    nightly_toolchain()?;
    debian_packages()?;
    cargo_fuzz()
}

/// Nightly with rust-src: aya-build builds the eBPF crate with `-Z build-std=core`.
fn nightly_toolchain() -> Result<()> {
    let toolchains = util::output(util::cmd("rustup").args(["toolchain", "list"]))
        .context("rustup is required (https://rustup.rs)")?;
    // Match the plain `nightly-<host>` channel, not dated `nightly-2025-...` ones.
    let has_nightly = toolchains.lines().any(|line| {
        line.split_whitespace().next().is_some_and(|name| {
            name.strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
    });
    if !has_nightly {
        println!("installing: nightly toolchain with rust-src");
        return util::run(util::cmd("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    println!("ok: nightly toolchain present");

    let components = util::output(util::cmd("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components
        .lines()
        .any(|c| c == "rust-src" || c.starts_with("rust-src-"))
    {
        println!("ok: rust-src present");
        return Ok(());
    }
    println!("installing: rust-src (nightly)");
    util::run(util::cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn debian_packages() -> Result<()> {
    // One dpkg-query for all packages; unknown ones are simply absent from
    // stdout (and it exits non-zero), so parse rather than trust the status.
    let out = util::cmd("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(DEBIAN_PACKAGES)
        .stderr(std::process::Stdio::null())
        .output()
        .context("dpkg-query not found: setup supports Debian only")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        // Multi-arch packages may print as `name:amd64`.
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect();
    if missing.is_empty() {
        println!("ok: {} debian packages present", DEBIAN_PACKAGES.len());
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing debian packages ({}); run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    println!("installing: {}", missing.join(" "));
    util::run(util::cmd("apt-get").arg("update"))?;
    util::run(
        util::cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// An LLVM "prefix" for bpf-linker's build: `lib/` symlinks to the nightly
/// toolchain's libLLVM, so no separate LLVM install is needed. bpf-linker
/// keeps this dir as its RUNPATH, so links are refreshed whenever nightly
/// moves (the old ones would dangle).
fn llvm_prefix() -> Result<PathBuf> {
    let prefix = util::home()?.join(".local/share/floatip/llvm");
    let lib_dir = prefix.join("lib");

    let sysroot =
        util::output(util::cmd("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let toolchain_lib = Path::new(sysroot.trim()).join("lib");
    let pattern = format!("libLLVM.so.{LLVM_MAJOR}.1-rust-");
    let mut candidates: Vec<String> = fs::read_dir(&toolchain_lib)
        .with_context(|| format!("reading {}", toolchain_lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&pattern))
        .collect();
    candidates.sort();
    let Some(versioned) = candidates.pop() else {
        bail!(
            "no {pattern}* in {}: nightly's LLVM major changed; update LLVM_MAJOR in xtask/src/setup.rs",
            toolchain_lib.display()
        );
    };
    let target = toolchain_lib.join(&versioned);

    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let mut changed = remove_dangling_llvm_links(&lib_dir)?;
    for name in ["libLLVM.so", versioned.as_str()] {
        changed |= ensure_symlink(&lib_dir.join(name), &target)?;
    }
    if changed {
        println!("linked: {} -> {}", lib_dir.display(), target.display());
    } else {
        println!("ok: llvm prefix {}", prefix.display());
    }
    Ok(prefix)
}

/// Returns whether the link had to be (re)created.
fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    match fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", link.display()));
        }
        _ => {}
    }
    symlink(target, link).with_context(|| format!("linking {}", link.display()))?;
    Ok(true)
}

/// Links left over from a previous nightly whose libLLVM is gone.
fn remove_dangling_llvm_links(lib_dir: &Path) -> Result<bool> {
    let mut removed = false;
    for entry in fs::read_dir(lib_dir)? {
        let path = entry?.path();
        let is_llvm = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libLLVM"));
        // metadata() follows the link, so it fails exactly when it dangles.
        if is_llvm && path.is_symlink() && fs::metadata(&path).is_err() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed = true;
        }
    }
    Ok(removed)
}

/// The version a `cargo install`ed binary reports ("name 1.2.3"), None if missing or broken.
fn installed_version(name: &str) -> Result<Option<String>> {
    let bin = util::cargo_bin_dir()?.join(name);
    let found = util::probe(util::cmd(&bin).arg("--version"));
    Ok(found.and_then(|out| out.split_whitespace().nth(1).map(str::to_owned)))
}

fn cargo_fuzz() -> Result<()> {
    cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, "about a minute")
}

fn cargo_deb() -> Result<()> {
    cargo_tool("cargo-deb", CARGO_DEB_VERSION, "a few minutes")
}

/// `cargo install NAME --version =VERSION --locked`, unless that version answers already.
fn cargo_tool(name: &str, version: &str, takes: &str) -> Result<()> {
    let found = installed_version(name)?;
    if found.as_deref() == Some(version) {
        println!("ok: {name} {version} present");
        return Ok(());
    }
    println!(
        "installing: {name} {version} (found: {}; cargo install takes {takes})",
        found.as_deref().unwrap_or("none/broken")
    );
    util::run(
        util::cargo()
            // Outside the workspace so its .cargo/config.toml cannot interfere.
            .current_dir(util::home()?)
            .args(["install", name, "--locked", "--force", "--version"])
            .arg(format!("={version}")),
    )
}

fn bpf_linker(llvm_prefix: &Path) -> Result<()> {
    // `--version` also fails when the libLLVM it was linked against vanished,
    // which is exactly when it must be rebuilt.
    let version = installed_version("bpf-linker")?;
    if let Some(v) = &version
        && v.starts_with(&format!("{BPF_LINKER_VERSION}."))
    {
        println!("ok: bpf-linker {v} present");
        return Ok(());
    }
    println!(
        "installing: bpf-linker {BPF_LINKER_VERSION} (found: {}; cargo install takes several minutes)",
        version.as_deref().unwrap_or("none/broken")
    );
    let mut install = util::nightly_cargo();
    install
        // Outside the workspace so its .cargo/config.toml cannot interfere.
        .current_dir(util::home()?)
        .env("LLVM_PREFIX", llvm_prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            &format!("^{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
            // Same version but broken (LLVM moved) would otherwise be skipped.
            "--force",
        ]);
    util::run(&mut install)
}
