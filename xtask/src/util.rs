//! Helpers for locating things and running child processes.

use std::{
    env,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (parent of this crate), so commands work from any cwd.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` of the workspace).
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

pub fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Where `cargo install` puts binaries (bpf-linker lives here).
pub fn cargo_bin_dir() -> Result<PathBuf> {
    Ok(match env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        Some(cargo_home) => PathBuf::from(cargo_home).join("bin"),
        None => home()?.join(".cargo/bin"),
    })
}

/// PATH for children with the cargo bin dir first: aya-build looks up
/// `bpf-linker` and `rustup` on PATH, and a login shell may not have it.
fn child_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = cargo_bin_dir().into_iter().collect();
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path));
        }
        env::join_paths(dirs).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default())
    })
}

/// A command whose program is looked up (and whose children look things up)
/// with the cargo bin dir on PATH.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path());
    // What `cargo run` set for xtask itself would reach the builds below, where build scripts
    // that track them (ring's tracks CARGO_MANIFEST_DIR) would see them change from a
    // `cargo build` by hand and rebuild rustls, axum-server and floatip every other time.
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Variables `cargo run` sets for the program it runs (`CARGO`, kept on purpose, aside).
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
        )
}

/// `cargo` of the toolchain running xtask (cargo sets $CARGO), so a
/// `cargo +toolchain xtask ...` invocation is honoured by child builds.
pub fn cargo() -> Command {
    let mut cmd = cmd(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo` of the nightly toolchain, via rustup (the $CARGO binary would not
/// understand `+nightly`).
pub fn nightly_cargo() -> Command {
    let mut cmd = cmd("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    cmd.current_dir(workspace_root());
    cmd
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Run with inherited stdio; fail if it does not exit successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("+ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Stdout of a quiet probe, or None if it cannot start or fails: presence
/// checks treat both as "missing".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stdout of a command that must succeed (used where failure is a real error).
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Moves xtask, and so everything it starts from here on, into a mount
/// namespace of its own whose mounts do not propagate to the host. floatip
/// mounts a bpffs at /sys/fs/bpf when there is none, and `ip netns add`
/// bind-mounts namespaces under /run/netns: made by tests, the demo or the
/// benchmarks, they vanish with the last process of the run instead of
/// staying on the machine (the kernel also fills every new bpffs with
/// `maps.debug` and `progs.debug`, which are not pins anyone made).
pub fn private_mounts() -> Result<()> {
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!(
            "cannot enter a private mount namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "cannot make the mounts private: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
